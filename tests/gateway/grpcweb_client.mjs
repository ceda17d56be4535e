// The example page's gRPC-Web client (examples/web/dist/shop.js: connect-web's gRPC-Web transport),
// run by Node outside any browser: node grpcweb_client.mjs GATEWAY_URL API_KEY
// Prints one JSON object: GetUser(101), ListUsers(premium), and GetUser(102) until it is refused.
import { failure, shopClients } from "../../examples/web/dist/shop.js";

const [gateway, key] = process.argv.slice(2);
const shop = shopClients(gateway, key);
const result = {};
result.user = await shop.getUser(101);
const arrived = [];
result.listed = await shop.listUsers("premium", (user) => arrived.push(user.name));
result.arrived = arrived;
try {
  await shop.getUser(999);
} catch (error) {
  result.missing = failure(error);
}
for (let call = 1; call <= 10 && result.refused === undefined; call++) {
  try {
    await shop.getUser(102);
  } catch (error) {
    result.refused = { call, ...failure(error) };
  }
}
console.log(JSON.stringify(result));
