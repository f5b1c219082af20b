mod common;
use wiremux::engine::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let (server, addr) = common::start_default().await;
    let client = Client::connect(addr).await.unwrap();
    let r = client.call("echo").data("hi").send().await.unwrap();
    assert_eq!(r.body, "hi");
    let r = client.call("sleep").arg("ms", "10").send().await.unwrap();
    assert_eq!(r.body, "10");
    let r = client
        .call("blob")
        .arg("size", "200000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.body.len(), 200000);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i % 251) as u8));
    let e = client.call("nope").send().await.unwrap_err();
    assert_eq!(e.to_string(), "application error: unknown command: nope");
    let mut calls = Vec::new();
    for i in 0..1000 {
        let c = client.clone();
        calls.push(tokio::spawn(async move {
            c.call("echo").data(format!("{i}")).send().await
        }));
    }
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.await.unwrap().unwrap().body, format!("{i}"));
    }
    eprintln!("{:?}", server.stats());
}
