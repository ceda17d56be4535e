//! The routing plan Python sets: methods (by `:path`) to their upstream, and each upstream's pool. Swapped
//! whole; a call keeps the plan it started with (it holds an `Arc`), so old pools close with their last call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::retry::RetryPolicy;
use crate::upstream::Pool;

/// One method's route.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub upstream: String,
    pub service: String,
    pub client_streaming: bool,
    pub server_streaming: bool,
    pub reads_request: bool,
    pub default_timeout: Option<Duration>,
    /// Retries, for an idempotent unary method.
    pub retry: Option<RetryPolicy>,
}

#[derive(Default)]
pub struct Plan {
    methods: HashMap<String, Route>,
    upstreams: HashMap<String, Arc<Pool>>,
}

impl Plan {
    /// `methods` keyed by `:path` ("/pkg.Service/Method"; a key without the leading slash is taken as one).
    pub fn new(methods: HashMap<String, Route>, upstreams: HashMap<String, Arc<Pool>>) -> Plan {
        let methods = methods
            .into_iter()
            .map(|(path, route)| {
                (
                    if path.starts_with('/') {
                        path
                    } else {
                        format!("/{path}")
                    },
                    route,
                )
            })
            .collect();
        Plan { methods, upstreams }
    }

    pub fn route(&self, path: &str) -> Option<&Route> {
        self.methods.get(path)
    }

    pub fn pool(&self, upstream: &str) -> Option<&Arc<Pool>> {
        self.upstreams.get(upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_paths() {
        let route = Route {
            upstream: "users".into(),
            service: "shop.users.v1.UserService".into(),
            client_streaming: false,
            server_streaming: false,
            reads_request: true,
            default_timeout: None,
            retry: None,
        };
        let plan = Plan::new(
            HashMap::from([
                (
                    "/shop.users.v1.UserService/GetUser".to_owned(),
                    route.clone(),
                ),
                (
                    "shop.users.v1.UserService/ListUsers".to_owned(),
                    route.clone(),
                ),
            ]),
            HashMap::new(),
        );
        assert_eq!(
            plan.route("/shop.users.v1.UserService/GetUser"),
            Some(&route)
        );
        assert_eq!(
            plan.route("/shop.users.v1.UserService/ListUsers"),
            Some(&route)
        );
        assert_eq!(plan.route("/shop.users.v1.UserService/Nope"), None);
        assert!(plan.pool("users").is_none());
    }
}
