//! CORS: headers only for the configured origins, none by default.

use reqwest::Method;

use super::start;
use crate::helpers::client;

#[actix_rt::test]
async fn cors_headers_are_sent_only_to_the_configured_origins() {
    let http = client();
    let plain = start(|_| {}).await;
    let preflight = |address: &str, origin: &str| {
        http.request(Method::OPTIONS, format!("{address}/append"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type",
            )
    };
    // The answers to a simple request and to a preflight from `origin`.
    let answers = |address: &str, origin: &str| {
        let get = http.get(format!("{address}/head")).header("Origin", origin);
        let preflight = preflight(address, origin);
        async move { [get.send().await.unwrap(), preflight.send().await.unwrap()] }
    };
    for response in answers(&plain.address, "https://app.example").await {
        assert!(
            !response
                .headers()
                .keys()
                .any(|k| k.as_str().starts_with("access-control-")),
            "no CORS header by default: {:?}",
            response.headers()
        );
    }

    let cors = start(|s| s.http.cors_origins = vec!["https://app.example".into()]).await;
    let [allowed, preflighted] = answers(&cors.address, "https://app.example").await;
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let allowed = preflighted;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let methods = allowed.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("POST"), "{methods}");
    let headers = allowed.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(headers.contains("authorization"), "{headers}");
    for response in answers(&cors.address, "https://evil.example").await {
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "another origin gets no CORS header: {:?}",
            response.headers()
        );
    }
}
