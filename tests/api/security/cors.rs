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
    let get =
        |address: &str, origin: &str| http.get(format!("{address}/head")).header("Origin", origin);
    for response in [
        get(&plain.address, "https://app.example")
            .send()
            .await
            .unwrap(),
        preflight(&plain.address, "https://app.example")
            .send()
            .await
            .unwrap(),
    ] {
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
    let allowed = get(&cors.address, "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let allowed = preflight(&cors.address, "https://app.example")
        .send()
        .await
        .unwrap();
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
    for response in [
        get(&cors.address, "https://evil.example")
            .send()
            .await
            .unwrap(),
        preflight(&cors.address, "https://evil.example")
            .send()
            .await
            .unwrap(),
    ] {
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
