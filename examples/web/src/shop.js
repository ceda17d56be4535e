// The shop's services as a web page (or Node) calls them: gRPC-Web through the gateway's HTTP door,
// with connect-web's gRPC-Web transport. The messages and services come from the descriptor set that
// `make proto` writes (generated/shop/descriptor_set.binpb), bundled in: no code generation step.
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import descriptorSet from "../../../generated/shop/descriptor_set.binpb";

const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, descriptorSet));
const UserService = registry.getService("shop.users.v1.UserService");

/** Clients of the gateway at `baseUrl` (its HTTP door, e.g. http://127.0.0.1:8080) sending `apiKey`. */
export function shopClients(baseUrl, apiKey) {
  const transport = createGrpcWebTransport({
    baseUrl,
    interceptors: [
      (next) => (request) => {
        request.header.set("x-api-key", apiKey);
        return next(request);
      },
    ],
  });
  const users = createClient(UserService, transport);
  return {
    /** GetUser: {userId, name, segment}. */
    async getUser(userId) {
      return plain(await users.getUser({ userId }));
    },
    /** ListUsers (server streaming): calls `each` with every user as it arrives; all of them at the end. */
    async listUsers(segment, each = () => {}) {
      const found = [];
      for await (const user of users.listUsers({ segment })) {
        found.push(plain(user));
        each(plain(user));
      }
      return found;
    },
  };
}

/** A failed call as the page shows it: the gRPC code's name, the message, the seconds to wait. */
export function failure(error) {
  const failed = ConnectError.from(error);
  return {
    code: Code[failed.code],
    message: failed.rawMessage,
    retryAfter: failed.metadata.get("retry-after"),
  };
}

function plain(user) {
  return { userId: user.userId, name: user.name, segment: user.segment };
}
