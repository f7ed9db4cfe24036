//! The batching WebSocket writer of the tunnel client (the session-host frames its sockets itself).

use futures_util::{Sink, SinkExt};
use tokio::sync::mpsc;

/// Writes everything from `frames` to `sink`, batching whatever is already queued into one
/// flush, until `frames` closes (then closes `sink`) or `sink` fails.
pub async fn write_batched<S, M>(mut sink: S, mut frames: mpsc::Receiver<M>)
where
    S: Sink<M> + Unpin,
{
    while let Some(frame) = frames.recv().await {
        if sink.feed(frame).await.is_err() {
            return;
        }
        while let Ok(frame) = frames.try_recv() {
            if sink.feed(frame).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}
