use super::*;
use std::task::Poll;
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::BoxError;
use tower_test::mock;

/// 429 is an overload, 400 says nothing about load, anything else is a success.
fn by_status(result: &Result<u16, BoxError>) -> Signal {
    match result {
        Ok(429) => Signal::Overload,
        Ok(400) | Err(_) => Signal::Ignore,
        Ok(_) => Signal::Success,
    }
}

type Classifier = fn(&Result<u16, BoxError>) -> Signal;
type Limited = mock::Spawn<AdaptiveLimit<mock::Mock<&'static str, u16>, Classifier>>;

fn spawn(config: AimdConfig) -> (Limited, mock::Handle<&'static str, u16>, LimitHandle) {
    let layer = AdaptiveLimitLayer::new(config, by_status as Classifier);
    let limit = layer.handle();
    let (service, handle) = mock::spawn_layer(layer);
    (service, handle, limit)
}

/// Answers the next request the mock receives with `status`.
async fn answer(handle: &mut mock::Handle<&'static str, u16>, status: u16) {
    let (_, respond) = handle.next_request().await.expect("a request");
    respond.send_response(status);
}

#[tokio::test(start_paused = true)]
async fn holds_requests_to_the_limit_and_wakes_a_waiter_when_one_leaves() {
    let (mut service, mut handle, limit) = spawn(AimdConfig::new(2, 1, 4));
    assert_ready_ok!(service.poll_ready());
    let mut first = task::spawn(service.call("a"));
    assert_ready_ok!(service.poll_ready());
    let _second = task::spawn(service.call("b"));
    assert_eq!(limit.in_flight(), 2);

    assert_pending!(service.poll_ready());
    assert!(!service.is_woken());

    answer(&mut handle, 200).await;
    assert_eq!(assert_ready_ok!(first.poll()), 200);
    assert!(
        service.is_woken(),
        "the waiting service is woken when a place frees"
    );
    assert_ready_ok!(service.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_overloads_from_one_round_halves_the_limit_once() {
    let (mut service, mut handle, limit) = spawn(AimdConfig::new(8, 1, 8));
    let mut calls = Vec::new();
    for name in ["a", "b", "c", "d"] {
        assert_ready_ok!(service.poll_ready());
        calls.push(task::spawn(service.call(name)));
    }
    for call in &mut calls {
        answer(&mut handle, 429).await;
        assert_eq!(assert_ready_ok!(call.poll()), 429);
    }
    assert_eq!(limit.limit(), 4, "four refusals of one round count once");

    // A request sent after the decrease belongs to a new round: its refusal shrinks the limit again.
    assert_ready_ok!(service.poll_ready());
    let mut later = task::spawn(service.call("e"));
    answer(&mut handle, 429).await;
    assert_ready_ok!(later.poll());
    assert_eq!(limit.limit(), 2);
}

#[tokio::test(start_paused = true)]
async fn never_below_the_floor() {
    let (mut service, mut handle, limit) = spawn(AimdConfig::new(2, 2, 4));
    for _ in 0..3 {
        assert_ready_ok!(service.poll_ready());
        let mut call = task::spawn(service.call("a"));
        answer(&mut handle, 429).await;
        assert_ready_ok!(call.poll());
        assert_eq!(limit.limit(), 2);
    }
}

#[tokio::test(start_paused = true)]
async fn successes_grow_the_limit_additively_up_to_the_ceiling() {
    let (mut service, mut handle, limit) = spawn(AimdConfig::new(1, 1, 3));
    let mut seen = Vec::new();
    for _ in 0..8 {
        assert_ready_ok!(service.poll_ready());
        let mut call = task::spawn(service.call("a"));
        answer(&mut handle, 200).await;
        assert_ready_ok!(call.poll());
        seen.push(limit.limit());
    }
    // 1 → 2 → 2.5 → 2.9 → 3.24 (capped at 3): one step per round of `limit` successes.
    assert_eq!(seen, [2, 2, 2, 3, 3, 3, 3, 3]);
}

#[tokio::test(start_paused = true)]
async fn neutral_results_and_errors_leave_the_limit_and_pass_through() {
    let (mut service, mut handle, limit) = spawn(AimdConfig::new(2, 1, 4));
    assert_ready_ok!(service.poll_ready());
    let mut call = task::spawn(service.call("a"));
    answer(&mut handle, 400).await;
    assert_eq!(assert_ready_ok!(call.poll()), 400);

    assert_ready_ok!(service.poll_ready());
    let mut call = task::spawn(service.call("b"));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_error("connection reset");
    match call.poll() {
        Poll::Ready(Err(error)) => assert_eq!(error.to_string(), "connection reset"),
        other => panic!("expected the inner error, got {other:?}"),
    }
    assert_eq!(limit.limit(), 2);
    assert_eq!(limit.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_response_frees_its_place_without_moving_the_limit() {
    let (mut service, _handle, limit) = spawn(AimdConfig::new(1, 1, 4));
    assert_ready_ok!(service.poll_ready());
    let call = service.call("a");
    assert_pending!(service.poll_ready());
    drop(call);
    assert!(service.is_woken());
    assert_ready_ok!(service.poll_ready());
    assert_eq!(limit.limit(), 1);
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_limit() {
    let (mut service, _handle, limit) = spawn(AimdConfig::new(1, 1, 4));
    let mut other = service.clone();
    assert_ready_ok!(service.poll_ready());
    assert_pending!(other.poll_ready());
    assert_eq!(limit.in_flight(), 1);
    drop(service);
    assert!(
        other.is_woken(),
        "a reserved place dropped with its service is given to the next"
    );
    assert_ready_ok!(other.poll_ready());
}

#[test]
#[should_panic(expected = "min <= initial <= max")]
fn bounds_out_of_order_are_refused() {
    AimdConfig::new(5, 1, 4);
}
