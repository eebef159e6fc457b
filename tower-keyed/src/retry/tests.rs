use super::*;
use tokio::time::Instant;
use tower::{BoxError, ServiceExt};
use tower_test::mock;

/// A status and the seconds of a `Retry-After`, as an HTTP API would answer.
type Reply = (u16, Option<u64>);

fn classify(result: &Result<Reply, BoxError>) -> Decision {
    match result {
        Ok((429, Some(secs))) => Decision::RetryAfter(Duration::from_secs(*secs)),
        Ok((429 | 500..=599, _)) | Err(_) => Decision::Retry,
        Ok(_) => Decision::Stop,
    }
}

const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(8),
    max_retries: 4,
    max_retry_after: Duration::from_secs(60),
};

type Classifier = fn(&Result<Reply, BoxError>) -> Decision;

/// Sends one request through a retrying mock on its own task; returns the caller's result handle and the mock.
fn send(
    backoff: Backoff,
) -> (
    tokio::task::JoinHandle<Result<Reply, BoxError>>,
    mock::Handle<&'static str, Reply>,
) {
    let (service, handle) = mock::pair::<&'static str, Reply>();
    let service = RetryPolicy::new(backoff, classify as Classifier)
        .layer()
        .layer(service);
    let call = tokio::spawn(service.oneshot("prompt"));
    (call, handle)
}

/// Waits for the next try and answers it; returns when it arrived.
async fn answer(handle: &mut mock::Handle<&'static str, Reply>, reply: Reply) -> Instant {
    let (request, respond) = handle.next_request().await.expect("another try");
    assert_eq!(request, "prompt", "the same request is sent again");
    let at = Instant::now();
    respond.send_response(reply);
    at
}

use tower::Layer;

#[tokio::test(start_paused = true)]
async fn waits_exactly_as_long_as_the_server_asked() {
    let (call, mut handle) = send(BACKOFF);
    let first = answer(&mut handle, (429, Some(7))).await;
    let second = answer(&mut handle, (200, None)).await;
    assert_eq!(second - first, Duration::from_secs(7));
    assert_eq!(call.await.unwrap().unwrap(), (200, None));
}

#[tokio::test(start_paused = true)]
async fn backs_off_exponentially_with_jitter_in_the_upper_half() {
    let (call, mut handle) = send(BACKOFF);
    let mut at = answer(&mut handle, (500, None)).await;
    for retry in 0..3 {
        let reply = if retry == 2 { (200, None) } else { (503, None) };
        let next = answer(&mut handle, reply).await;
        let waited = next - at;
        let full = BACKOFF.delay(retry);
        assert!(
            waited >= full / 2 && waited <= full,
            "retry {retry}: waited {waited:?}, expected within [{:?}, {full:?}]",
            full / 2
        );
        at = next;
    }
    assert_eq!(call.await.unwrap().unwrap(), (200, None));
    assert_eq!(
        BACKOFF.delay(10),
        BACKOFF.max,
        "the back-off stops growing at max"
    );
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_retries_with_the_last_answer() {
    let (call, mut handle) = send(BACKOFF);
    for _ in 0..=BACKOFF.max_retries {
        answer(&mut handle, (500, None)).await;
    }
    assert_eq!(call.await.unwrap().unwrap(), (500, None));
    // No further try arrives.
    assert!(handle.next_request().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn does_not_retry_what_the_classifier_stops() {
    let (call, mut handle) = send(BACKOFF);
    answer(&mut handle, (401, None)).await;
    assert_eq!(call.await.unwrap().unwrap(), (401, None));
    assert!(handle.next_request().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_wait_longer_than_allowed_returns_the_refusal_at_once() {
    let (call, mut handle) = send(BACKOFF);
    let asked = answer(&mut handle, (429, Some(3600))).await;
    assert_eq!(call.await.unwrap().unwrap(), (429, Some(3600)));
    assert_eq!(Instant::now(), asked, "no time was spent waiting");
}

#[tokio::test(start_paused = true)]
async fn errors_are_retried_and_then_succeed() {
    let (call, mut handle) = send(BACKOFF);
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_error("connection reset");
    answer(&mut handle, (200, None)).await;
    assert_eq!(call.await.unwrap().unwrap(), (200, None));
}
