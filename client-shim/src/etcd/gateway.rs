//! The few etcd v3 calls the lock adapter needs, over etcd's JSON gateway (grpc-gateway):
//! `POST /v3/<service>/<method>` with the request message as JSON. Per the proto3 JSON
//! mapping, 64-bit integers travel as strings and byte fields as base64.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Value};

use super::EtcdError;

/// gRPC status code etcd answers with for an unknown lease (`NotFound`).
const NOT_FOUND: i64 = 5;

/// An etcd endpoint's JSON gateway.
#[derive(Debug, Clone)]
pub(crate) struct Gateway {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
}

impl Gateway {
    /// `endpoint` is `http://host:port` (a client URL of one etcd member).
    pub(crate) fn new(
        endpoint: &str,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Result<Gateway, EtcdError> {
        let base = endpoint.trim_end_matches('/');
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(EtcdError::InvalidEndpoint(endpoint.to_string()));
        }
        Ok(Gateway {
            http,
            base: base.to_string(),
            timeout,
        })
    }

    /// Grants a lease of `ttl_secs`; returns its id and the TTL etcd granted (etcd raises
    /// TTLs below its minimum, about 1.5 election timeouts).
    pub(crate) async fn grant(&self, ttl_secs: i64) -> Result<(i64, i64), EtcdError> {
        let reply = self
            .call("/v3/lease/grant", json!({ "TTL": ttl_secs.to_string() }))
            .await?;
        Ok((int(&reply, "ID")?, int(&reply, "TTL")?))
    }

    /// Refreshes a lease once: `Some(ttl)` while it lives, `None` once it is gone.
    pub(crate) async fn keepalive(&self, lease: i64) -> Result<Option<i64>, EtcdError> {
        let reply = self
            .call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))
            .await?;
        // A streaming method: each reply message is wrapped in "result" (or "error").
        if let Some(error) = reply.get("error") {
            return Err(server_error(error));
        }
        let result = reply.get("result").ok_or_else(|| {
            EtcdError::Protocol(format!("keepalive reply without result: {reply}"))
        })?;
        // proto3 JSON leaves out zero values: no TTL means the lease has expired.
        let ttl = opt_int(result, "TTL")?.unwrap_or(0);
        Ok((ttl > 0).then_some(ttl))
    }

    /// Revokes a lease, deleting every key attached to it; a lease that is already gone
    /// is not an error.
    pub(crate) async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        match self
            .call("/v3/lease/revoke", json!({ "ID": lease.to_string() }))
            .await
        {
            Ok(_) => Ok(()),
            Err(EtcdError::Server {
                code: NOT_FOUND, ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits (without a timeout) until the lock `name` is granted to `lease`; returns the
    /// lock key, `name/<lease id in hex>`, which lives as long as the lease.
    pub(crate) async fn lock(&self, name: &[u8], lease: i64) -> Result<Vec<u8>, EtcdError> {
        let body = json!({ "name": BASE64.encode(name), "lease": lease.to_string() });
        let reply = self.post("/v3/lock/lock", body, None).await?;
        bytes(&reply, "key")
    }

    /// The revision at which `key` was created, or `None` when it does not exist.
    pub(crate) async fn create_revision(&self, key: &[u8]) -> Result<Option<i64>, EtcdError> {
        let reply = self
            .call("/v3/kv/range", json!({ "key": BASE64.encode(key) }))
            .await?;
        let Some(kv) = reply.get("kvs").and_then(|kvs| kvs.get(0)) else {
            return Ok(None);
        };
        Ok(Some(int(kv, "create_revision")?))
    }

    /// A call with the default timeout.
    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        self.post(path, body, Some(self.timeout)).await
    }

    async fn post(
        &self,
        path: &str,
        body: Value,
        timeout: Option<Duration>,
    ) -> Result<Value, EtcdError> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        let reply: Value = match serde_json::from_str(&text) {
            Ok(reply) => reply,
            Err(source) => {
                return Err(EtcdError::NotJson {
                    path: path.to_string(),
                    status,
                    source,
                    text,
                })
            }
        };
        if !status.is_success() {
            return Err(server_error(&reply));
        }
        Ok(reply)
    }
}

/// `{"error": "...", "message": "...", "code": N}` (unary) or
/// `{"grpc_code": N, "message": "..."}` (inside a stream's `"error"`).
fn server_error(error: &Value) -> EtcdError {
    let code = error
        .get("code")
        .or_else(|| error.get("grpc_code"))
        .and_then(Value::as_i64)
        .unwrap_or(-1);
    let message = error
        .get("message")
        .or_else(|| error.get("error"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| error.to_string());
    EtcdError::Server { code, message }
}

/// A 64-bit integer field, sent as a string (or, leniently, a number).
fn opt_int(message: &Value, field: &str) -> Result<Option<i64>, EtcdError> {
    let Some(value) = message.get(field) else {
        return Ok(None);
    };
    let parsed = match value {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    };
    parsed
        .map(Some)
        .ok_or_else(|| EtcdError::Protocol(format!("field {field} is not an integer: {value}")))
}

fn int(message: &Value, field: &str) -> Result<i64, EtcdError> {
    opt_int(message, field)?
        .ok_or_else(|| EtcdError::Protocol(format!("missing field {field} in {message}")))
}

fn bytes(message: &Value, field: &str) -> Result<Vec<u8>, EtcdError> {
    let text = message
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| EtcdError::Protocol(format!("missing field {field} in {message}")))?;
    BASE64.decode(text).map_err(|source| EtcdError::NotBase64 {
        field: field.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_come_as_strings_or_numbers_and_zero_is_omitted() {
        let v = json!({ "ID": "7587", "TTL": 5, "bad": true });
        assert_eq!(int(&v, "ID").unwrap(), 7587);
        assert_eq!(int(&v, "TTL").unwrap(), 5);
        assert_eq!(opt_int(&v, "missing").unwrap(), None);
        assert!(matches!(opt_int(&v, "bad"), Err(EtcdError::Protocol(_))));
    }

    #[test]
    fn errors_of_unary_and_streaming_calls() {
        let unary = json!({"error": "etcdserver: requested lease not found",
                           "message": "etcdserver: requested lease not found", "code": 5});
        assert!(
            matches!(server_error(&unary), EtcdError::Server { code: 5, ref message }
                         if message == "etcdserver: requested lease not found")
        );
        let stream = json!({"grpc_code": 14, "http_code": 503, "message": "unavailable"});
        assert!(matches!(
            server_error(&stream),
            EtcdError::Server { code: 14, .. }
        ));
    }

    #[test]
    fn keys_are_base64() {
        let v = json!({ "key": "am9iczo3LzM5MGRhMjE3YTMzZTQwMDY=" });
        assert_eq!(bytes(&v, "key").unwrap(), b"jobs:7/390da217a33e4006");
        assert!(Gateway::new(
            "127.0.0.1:2379",
            reqwest::Client::new(),
            Duration::from_secs(1)
        )
        .is_err());
    }
}
