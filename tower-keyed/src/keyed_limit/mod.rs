//! Limit how many requests each key has in flight and waiting.
//!
//! [`KeyedLimit`] lets at most `max_active` requests of one key into the inner service at a time, keeps at most
//! `max_waiting` more of that key waiting (first in, first out), and refuses any further one at once with
//! [`KeyQueueFull`]. Keys are independent: a busy key never delays another.
//!
//! The key comes from an [`ExtractKey`](crate::ExtractKey): by default the request's own [`Keyed`](crate::Keyed)
//! key, or any closure given to [`KeyedLimitLayer::with_key`] (or [`KeyedLimit::with_key`]).
//!
//! The key is only known when a request is called, so readiness cannot be decided in `poll_ready`: the service is
//! always ready, and the [response future](future::ResponseFuture) waits for the key's slot, then for the inner
//! service, then for the response. It holds the slot until the inner response completes; dropping it at any stage
//! frees the slot. A key's state is freed as soon as it has nothing waiting or in flight, so memory follows the
//! number of busy keys, not the number of keys ever seen.

mod error;
pub mod future;
mod layer;
mod service;

pub use self::{error::KeyQueueFull, layer::KeyedLimitLayer, service::KeyedLimit};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BoxError, Keyed};
    use futures_util::{FutureExt, poll};
    use std::time::Duration;
    use tokio::{task::JoinHandle, time::timeout};
    use tower::{Layer, Service, ServiceExt, service_fn};
    use tower_test::{
        assert_request_eq,
        mock::{self, Mock},
    };

    use crate::test_support::{Req, req};

    type Limited = KeyedLimit<Mock<Req, &'static str>, &'static str>;
    type MockHandle = mock::Handle<Req, &'static str>;

    fn limited(max_active: usize, max_waiting: usize) -> (Limited, MockHandle) {
        let (inner, handle) = mock::pair();
        (
            KeyedLimitLayer::new(max_active, max_waiting).layer(inner),
            handle,
        )
    }

    /// Calls the service and drives the response on its own task, as a real caller would.
    fn send(svc: &mut Limited, request: Req) -> JoinHandle<Result<&'static str, BoxError>> {
        tokio::spawn(svc.call(request))
    }

    /// Asserts that no request reaches the inner service (the paused clock jumps the second at once).
    async fn assert_no_request(handle: &mut MockHandle) {
        if let Ok(Some((request, _))) = timeout(Duration::from_secs(1), handle.next_request()).await
        {
            panic!("unexpected request reached the inner service: {request:?}");
        }
    }

    fn assert_refused(result: Result<&'static str, BoxError>, max_waiting: usize) {
        let error = result.expect_err("request should be refused");
        let full = error
            .downcast_ref::<KeyQueueFull>()
            .unwrap_or_else(|| panic!("not KeyQueueFull: {error}"));
        assert_eq!(full.max_waiting(), max_waiting);
        assert_eq!(
            error.to_string(),
            format!("too many requests waiting for this key (limit {max_waiting})")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_active_per_key_and_keys_are_independent() {
        let (svc, mut handle) =
            mock::spawn_layer::<Req, &'static str, _>(KeyedLimitLayer::new(1, 5));
        let mut svc = svc;
        assert!(
            svc.poll_ready::<Req>().is_ready(),
            "the limit is decided per request, never in poll_ready"
        );
        let mut svc = svc.into_inner();

        let a1 = send(&mut svc, req("a", 1));
        let a2 = send(&mut svc, req("a", 2));
        let b1 = send(&mut svc, req("b", 1));

        let a1_response = assert_request_eq!(handle, req("a", 1));
        let b1_response = assert_request_eq!(handle, req("b", 1));
        assert_no_request(&mut handle).await;
        assert_eq!(svc.active_keys(), 2);

        a1_response.send_response("a1");
        assert_eq!(a1.await.unwrap().unwrap(), "a1");
        assert_request_eq!(handle, req("a", 2)).send_response("a2");
        assert_eq!(a2.await.unwrap().unwrap(), "a2");

        b1_response.send_response("b1");
        assert_eq!(b1.await.unwrap().unwrap(), "b1");
        assert_eq!(svc.active_keys(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_beyond_the_waiting_bound_at_once_and_only_for_that_key() {
        let (mut svc, mut handle) = limited(1, 2);
        let a1 = send(&mut svc, req("a", 1));
        let _a2 = send(&mut svc, req("a", 2));
        let _a3 = send(&mut svc, req("a", 3));
        let a1_response = assert_request_eq!(handle, req("a", 1));

        // Resolved on its first poll: the caller learns at once, without waiting for anything.
        let a4 = svc
            .call(req("a", 4))
            .now_or_never()
            .expect("a refusal must not wait");
        assert_refused(a4, 2);

        let b1 = send(&mut svc, req("b", 1));
        assert_request_eq!(handle, req("b", 1)).send_response("b1");
        assert_eq!(b1.await.unwrap().unwrap(), "b1");

        // Once a1 finishes, a has 2 admitted again and accepts one more.
        a1_response.send_response("a1");
        assert_eq!(a1.await.unwrap().unwrap(), "a1");
        let _a5 = send(&mut svc, req("a", 5));
        assert_refused(svc.call(req("a", 6)).await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_waiting_future_frees_its_place() {
        let (mut svc, mut handle) = limited(1, 1);
        let _a1 = send(&mut svc, req("a", 1));
        let _a1_response = assert_request_eq!(handle, req("a", 1));
        let mut a2 = Box::pin(svc.call(req("a", 2)));
        assert!(poll!(a2.as_mut()).is_pending());
        assert_refused(svc.call(req("a", 3)).await, 1);

        drop(a2);
        let mut a4 = Box::pin(svc.call(req("a", 4)));
        assert!(
            poll!(a4.as_mut()).is_pending(),
            "the freed waiting place should admit a new request"
        );
        assert_refused(svc.call(req("a", 5)).await, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_an_active_future_frees_its_slot() {
        let (mut svc, mut handle) = limited(1, 5);
        let a1 = send(&mut svc, req("a", 1));
        let _a1_response = assert_request_eq!(handle, req("a", 1));
        let a2 = send(&mut svc, req("a", 2));
        assert_no_request(&mut handle).await;

        a1.abort();
        assert!(a1.await.unwrap_err().is_cancelled());
        assert_request_eq!(handle, req("a", 2)).send_response("a2");
        assert_eq!(a2.await.unwrap().unwrap(), "a2");
        assert_eq!(svc.active_keys(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_served_in_call_order_whatever_order_its_futures_are_polled_in() {
        let (mut svc, mut handle) = limited(1, 5);
        let a1 = send(&mut svc, req("a", 1));
        let a1_response = assert_request_eq!(handle, req("a", 1));
        let a2 = svc.call(req("a", 2));
        let a3 = svc.call(req("a", 3));
        let a3 = tokio::spawn(a3);
        tokio::task::yield_now().await;
        let a2 = tokio::spawn(a2);

        a1_response.send_response("a1");
        a1.await.unwrap().unwrap();
        assert_request_eq!(handle, req("a", 2)).send_response("a2");
        assert_request_eq!(handle, req("a", 3)).send_response("a3");
        assert_eq!(a2.await.unwrap().unwrap(), "a2");
        assert_eq!(a3.await.unwrap().unwrap(), "a3");
    }

    #[tokio::test(start_paused = true)]
    async fn inner_errors_pass_through_and_free_the_slot() {
        let (mut svc, mut handle) = limited(1, 5);
        let a1 = send(&mut svc, req("a", 1));
        assert_request_eq!(handle, req("a", 1)).send_error("inner failed");
        assert_eq!(a1.await.unwrap().unwrap_err().to_string(), "inner failed");
        assert_eq!(svc.active_keys(), 0);
    }

    /// A request type that cannot name its key itself (as `http::Request` cannot: the orphan rule forbids it) is
    /// limited by a closure's key: here a (tenant, n) tuple keyed by its tenant.
    #[tokio::test(start_paused = true)]
    async fn a_closure_extracts_the_key_of_a_foreign_request_type() {
        let (inner, mut handle) = mock::pair::<(String, u32), &'static str>();
        let layer = KeyedLimitLayer::new(1, 1).with_key(|req: &(String, u32)| req.0.clone());
        let mut svc = layer.layer(inner);
        let request = |tenant: &str, n| (tenant.to_owned(), n);

        let acme1 = tokio::spawn(svc.call(request("acme", 1)));
        let _acme2 = tokio::spawn(svc.call(request("acme", 2)));
        let globex1 = tokio::spawn(svc.call(request("globex", 1)));
        let acme1_response = assert_request_eq!(handle, request("acme", 1));
        // globex is a key of its own, so acme's waiting request does not hold it back.
        assert_request_eq!(handle, request("globex", 1)).send_response("globex1");
        assert_eq!(globex1.await.unwrap().unwrap(), "globex1");
        assert_eq!(svc.active_keys(), 1);

        // acme has 1 active and 1 waiting: a third acme request is refused by the closure's key.
        let error = svc.call(request("acme", 3)).await.unwrap_err();
        assert!(error.is::<KeyQueueFull>(), "{error}");
        acme1_response.send_response("acme1");
        assert_eq!(acme1.await.unwrap().unwrap(), "acme1");
        assert_request_eq!(handle, request("acme", 2)).send_response("acme2");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_forgotten() {
        #[derive(Debug)]
        struct User(u32);
        impl Keyed for User {
            type Key = u32;
            fn key(&self) -> u32 {
                self.0
            }
        }
        let inner = service_fn(|user: User| async move {
            tokio::time::sleep(Duration::from_millis(u64::from(user.0 % 7))).await;
            Ok::<_, BoxError>(user.0)
        });
        let mut svc = KeyedLimit::new(inner, 1, 5);

        let mut calls = Vec::new();
        for user in 0..10_000 {
            calls.push(tokio::spawn(svc.ready().await.unwrap().call(User(user))));
        }
        assert_eq!(svc.active_keys(), 10_000);
        for (user, call) in (0..).zip(calls) {
            assert_eq!(call.await.unwrap().unwrap(), user);
        }
        assert_eq!(svc.active_keys(), 0);

        // The same after one at a time.
        for user in 10_000..11_000 {
            svc.ready().await.unwrap().call(User(user)).await.unwrap();
        }
        assert_eq!(svc.active_keys(), 0);
    }
}
