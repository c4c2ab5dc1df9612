//! Every error is `{code, message}`, including the ones axum produces
//! itself (a query string it cannot read), and a query string with a
//! parameter the endpoint does not know is refused, not ignored.

use crate::common::TestApp;
use axum::http::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_string_errors_are_json_with_a_reason() {
    let app = TestApp::new().await;
    for (path, names) in [
        ("/trains?limit=abc", "limit"),
        ("/audit?after=x", "after"),
        ("/resizes?open=maybe", "open"),
        ("/trains?pipeline=p&bogus=1", "bogus"),
        ("/trains/x/events?after=1&colour=red", "colour"),
        ("/cells/deploys?cel=a", "cel"),
        ("/capacity/plan?headroom=lots", "headroom"),
    ] {
        let (s, v) = app.as_role("admin", "GET", path, Value::Null).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert_eq!(v["code"], "invalid_request", "{path}: {v}");
        let m = v["message"].as_str().unwrap_or("");
        assert!(m.contains(names), "{path}: {m}");
    }
    // A method a route does not have is refused, in JSON too.
    let (s, v) = app.as_role("admin", "DELETE", "/trains", Value::Null).await;
    assert!(s.is_client_error(), "{s} {v}");
    assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
}
