//! Gathered socket writes: a writer task waits for one queued frame, then takes every frame
//! already queued behind it (up to `SOCKET_WRITE_GATHER_BYTES`) and writes them with one call,
//! so a burst of responses or batches costs one syscall instead of one each. Frames are
//! complete (header and payload), so gathering never splits or reorders them.
//!
//! It must not look inside frames.

use futures_lite::future::poll_once;
use glommio::channels::local_channel::LocalReceiver;

use crate::constants::SOCKET_WRITE_GATHER_BYTES;

/// Waits for the next frame and appends it, and every frame queued behind it, to `out`
/// (cleared first). Returns false once the channel has closed and nothing is left.
pub async fn gather_frames(frames: &LocalReceiver<Vec<u8>>, out: &mut Vec<u8>) -> bool {
    out.clear();
    let Some(first) = frames.recv().await else {
        return false;
    };
    if first.len() >= SOCKET_WRITE_GATHER_BYTES {
        // Large enough alone (a snapshot chunk, a catch-up append): written as it is, not
        // copied; its buffer serves the next gathers.
        *out = first;
        return true;
    }
    out.extend_from_slice(&first);
    while out.len() < SOCKET_WRITE_GATHER_BYTES {
        match poll_once(frames.recv()).await {
            Some(Some(frame)) => out.extend_from_slice(&frame),
            // Nothing queued now (None) or closed (Some(None)): write what we have.
            _ => break,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_frames_are_gathered_in_order_and_close_ends() {
        // Three queued frames come out as one buffer in order, a large frame alone as it is;
        // a closed, empty channel ends.
        let config = crate::reactor::executor::ExecutorConfig::new("test-gather");
        let handle = crate::reactor::executor::spawn_executor(&config, || async {
            let (sender, receiver) = glommio::channels::local_channel::new_unbounded();
            for frame in [b"ab".to_vec(), b"c".to_vec(), b"def".to_vec()] {
                sender.try_send(frame).expect("unbounded");
            }
            let mut out = Vec::new();
            assert!(gather_frames(&receiver, &mut out).await);
            assert_eq!(out, b"abcdef");
            sender.try_send(b"g".to_vec()).expect("unbounded");
            assert!(gather_frames(&receiver, &mut out).await);
            assert_eq!(out, b"g");
            // A frame large enough alone is handed over as it is, not copied.
            let large = vec![7u8; SOCKET_WRITE_GATHER_BYTES];
            let at = large.as_ptr();
            sender.try_send(large).expect("unbounded");
            sender.try_send(b"h".to_vec()).expect("unbounded");
            assert!(gather_frames(&receiver, &mut out).await);
            assert_eq!((out.as_ptr(), out.len()), (at, SOCKET_WRITE_GATHER_BYTES));
            assert!(gather_frames(&receiver, &mut out).await);
            assert_eq!(out, b"h");
            drop(sender);
            assert!(!gather_frames(&receiver, &mut out).await);
        })
        .expect("executor starts");
        handle.join().expect("no panic");
    }
}
