//! A bounded buffer that dispatches round-robin across keys.
//!
//! [`FairQueue`] is like tower's [`Buffer`](https://docs.rs/tower/0.5/tower/buffer/struct.Buffer.html): a worker task owns the inner service and callers
//! get a cheap, clonable handle. The difference is the order of dispatch. Whenever the inner service is ready, the
//! worker takes the next request **round-robin across the keys that have requests waiting**, first in, first out
//! within a key. A key joins the rotation when its first request arrives, goes to the back after each request it gets
//! served while it still has more, and leaves the rotation (its state freed) when it has none left. One key with
//! hundreds of requests waiting therefore delays another key's single request by at most one request.
//!
//! `poll_ready` reserves one of `capacity` places in the queue; the place is freed when the worker dispatches the
//! request or drops it (because its caller went away). The worker calls the inner service and hands its response
//! future back to the caller, whose [`ResponseFuture`](future::ResponseFuture) drives it: resources the inner
//! layers tie to the response future (for example a global concurrency permit) stay with the caller, and dropping the
//! future frees them.
//!
//! A request's key comes from an [`ExtractKey`](crate::ExtractKey): by default the request's own
//! [`Keyed`](crate::Keyed) key, or any closure given to [`FairQueueLayer::with_key`] (or [`FairQueue::with_key`]).
//!
//! If the inner service fails `poll_ready`, the queue closes: every waiting and later caller gets [`QueueClosed`]
//! with the inner error as its source. When every handle is dropped, the worker serves what is still queued and ends.
//! [`FairQueue::pair`] returns that worker as a [`FairQueueWorker`] for callers that run it themselves.

mod error;
pub mod future;
mod layer;
mod service;
mod worker;

pub use self::{
    error::QueueClosed, layer::FairQueueLayer, service::FairQueue, worker::FairQueueWorker,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxError;
    use std::{error::Error, time::Duration};
    use tokio::{task::JoinHandle, time::timeout};
    use tower::{Service, ServiceExt};
    use tower_test::mock::{self, Spawn};

    use crate::test_support::{Req, req};

    type Queue = FairQueue<Req, mock::future::ResponseFuture<&'static str>>;
    type MockHandle = mock::Handle<Req, &'static str>;

    /// A queue in front of a mock that admits nothing until the test allows it.
    fn stalled_queue(capacity: usize) -> (Queue, MockHandle) {
        let (inner, mut handle) = mock::pair();
        handle.allow(0);
        (FairQueue::new(inner, capacity), handle)
    }

    /// Reserves a place, calls, and drives the response on its own task.
    async fn submit(queue: &mut Queue, request: Req) -> JoinHandle<Result<&'static str, BoxError>> {
        let future = queue
            .ready()
            .await
            .expect("queue should be open")
            .call(request);
        tokio::spawn(future)
    }

    /// Lets the inner service take one request and returns it, answered.
    async fn grant_one(handle: &mut MockHandle) -> Req {
        handle.allow(1);
        let (request, response) = timeout(Duration::from_secs(1), handle.next_request())
            .await
            .expect("a request should be dispatched")
            .expect("mock handle closed");
        response.send_response(request.user);
        request
    }

    async fn assert_no_request(handle: &mut MockHandle) {
        handle.allow(1);
        if let Ok(Some((request, _))) = timeout(Duration::from_secs(1), handle.next_request()).await
        {
            panic!("unexpected request reached the inner service: {request:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn dispatches_round_robin_across_keys() {
        let (mut queue, mut handle) = stalled_queue(64);
        let mut calls = Vec::new();
        for n in 0..20 {
            calls.push(submit(&mut queue, req("A", n)).await);
        }
        for user in ["B", "C", "D", "E"] {
            calls.push(submit(&mut queue, req(user, 0)).await);
        }

        let mut order = Vec::new();
        for _ in 0..24 {
            order.push(grant_one(&mut handle).await);
        }
        let users: Vec<&str> = order.iter().map(|r| r.user).collect();
        println!("grant order: {}", users.join(", "));

        let second_a = 1 + users[1..]
            .iter()
            .position(|u| *u == "A")
            .expect("A is served again");
        for user in ["B", "C", "D", "E"] {
            let at = users
                .iter()
                .position(|u| *u == user)
                .expect("every key is served");
            assert!(
                at < second_a,
                "{user} served at {at}, after A's second request at {second_a}: {users:?}"
            );
        }
        assert_eq!(users[..6], ["A", "B", "C", "D", "E", "A"]);
        assert!(users[6..].iter().all(|u| *u == "A"));
        // FIFO within a key.
        let a_order: Vec<u32> = order
            .iter()
            .filter(|r| r.user == "A")
            .map(|r| r.n)
            .collect();
        assert_eq!(a_order, (0..20).collect::<Vec<_>>());
        for call in calls {
            call.await.unwrap().unwrap();
        }
    }

    /// A foreign request type (a (tenant, n) tuple) is scheduled by a closure's key: round-robin across tenants.
    #[tokio::test(start_paused = true)]
    async fn a_closure_extracts_the_key_of_a_foreign_request_type() {
        type Tuple = (&'static str, u32);
        let (inner, mut handle) = mock::pair::<Tuple, ()>();
        handle.allow(0);
        let (mut queue, worker) = FairQueue::pair_with_key(inner, |req: &Tuple| req.0, 16);
        tokio::spawn(worker);
        let mut calls = Vec::new();
        for request in [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)] {
            calls.push(tokio::spawn(queue.ready().await.unwrap().call(request)));
        }
        let mut order = Vec::new();
        for _ in 0..5 {
            handle.allow(1);
            let (request, response) = handle.next_request().await.unwrap();
            response.send_response(());
            order.push(request);
        }
        assert_eq!(order, [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)]);
        for call in calls {
            call.await.unwrap().unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_arriving_late_joins_the_rotation_at_the_next_dispatch() {
        let (mut queue, mut handle) = stalled_queue(64);
        for n in 0..10 {
            submit(&mut queue, req("A", n)).await;
        }
        assert_eq!(grant_one(&mut handle).await, req("A", 0));
        // The worker is now waiting for the inner service with only A queued; B arrives meanwhile.
        tokio::task::yield_now().await;
        submit(&mut queue, req("B", 0)).await;
        let next_two = [
            grant_one(&mut handle).await.user,
            grant_one(&mut handle).await.user,
        ];
        assert_eq!(
            next_two,
            ["A", "B"],
            "B must be in the rotation as soon as it arrived, not after A's backlog"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_left_is_skipped() {
        let (mut queue, mut handle) = stalled_queue(8);
        let a0 = submit(&mut queue, req("A", 0)).await;
        let a1 = queue.ready().await.unwrap().call(req("A", 1));
        let b0 = submit(&mut queue, req("B", 0)).await;
        let a2 = submit(&mut queue, req("A", 2)).await;
        tokio::task::yield_now().await; // the worker has them all queued now
        drop(a1);

        assert_eq!(grant_one(&mut handle).await, req("A", 0));
        assert_eq!(grant_one(&mut handle).await, req("B", 0));
        assert_eq!(grant_one(&mut handle).await, req("A", 2));
        assert_no_request(&mut handle).await;
        for call in [a0, b0, a2] {
            call.await.unwrap().unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn poll_ready_waits_for_a_place() {
        let (queue, mut handle) = stalled_queue(2);
        let mut queue = Spawn::new(queue);
        let mut calls = Vec::new();
        for n in 0..2 {
            assert!(queue.poll_ready::<Req>().is_ready());
            calls.push(tokio::spawn(queue.call(req("A", n))));
        }
        assert!(
            queue.poll_ready::<Req>().is_pending(),
            "a full queue must not accept a third request"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(queue.poll_ready::<Req>().is_pending());
        assert!(!queue.is_woken());

        // Dispatching one frees its place.
        grant_one(&mut handle).await;
        assert!(queue.is_woken());
        assert!(queue.poll_ready::<Req>().is_ready());
        calls.push(tokio::spawn(queue.call(req("A", 2))));
        for _ in 0..2 {
            grant_one(&mut handle).await;
        }
        for call in calls {
            call.await.unwrap().unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_leaving_the_queue_frees_its_place() {
        let (queue, _handle) = stalled_queue(2);
        let mut queue = Spawn::new(queue);
        assert!(queue.poll_ready::<Req>().is_ready());
        let _a0 = tokio::spawn(queue.call(req("A", 0)));
        assert!(queue.poll_ready::<Req>().is_ready());
        let a1 = tokio::spawn(queue.call(req("A", 1)));
        tokio::task::yield_now().await;
        assert!(queue.poll_ready::<Req>().is_pending());

        a1.abort();
        assert!(a1.await.unwrap_err().is_cancelled());
        tokio::task::yield_now().await; // the worker notices
        assert!(queue.is_woken());
        assert!(
            queue.poll_ready::<Req>().is_ready(),
            "the place of a caller that left must be freed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn inner_readiness_failure_closes_the_queue() {
        let (mut queue, mut handle) = stalled_queue(8);
        let a0 = submit(&mut queue, req("A", 0)).await;
        let b0 = submit(&mut queue, req("B", 0)).await;
        tokio::task::yield_now().await;
        handle.send_error("inner broke");

        for call in [a0, b0] {
            let error = call.await.unwrap().unwrap_err();
            let closed = error
                .downcast_ref::<QueueClosed>()
                .unwrap_or_else(|| panic!("not QueueClosed: {error}"));
            assert_eq!(
                closed.source().map(ToString::to_string).as_deref(),
                Some("inner broke")
            );
        }
        let error = queue.ready().await.unwrap_err();
        assert!(
            error.is::<QueueClosed>(),
            "later callers must be refused too: {error}"
        );
        assert_eq!(
            error.source().map(ToString::to_string).as_deref(),
            Some("inner broke")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_worker_serves_what_is_queued_then_ends_when_every_handle_is_gone() {
        let (inner, mut handle) = mock::pair::<Req, &'static str>();
        handle.allow(0);
        let (mut queue, worker): (Queue, FairQueueWorker<mock::Mock<Req, &'static str>, Req>) =
            FairQueue::pair(inner, 4);
        let worker = tokio::spawn(worker);
        let a0 = submit(&mut queue, req("A", 0)).await;
        let clone = queue.clone();
        drop(queue);
        drop(clone);

        tokio::task::yield_now().await;
        assert!(
            !worker.is_finished(),
            "a queued request is still to be served"
        );
        assert_eq!(grant_one(&mut handle).await, req("A", 0));
        assert_eq!(a0.await.unwrap().unwrap(), "A");
        timeout(Duration::from_secs(1), worker)
            .await
            .expect("worker should end")
            .unwrap();
    }
}
