//! SIGTERM and SIGINT: the request to stop gracefully, as one process-wide flag that every
//! core's tick task polls, and a count of the signals received (a launcher treats a second
//! Ctrl-C as "stop now"). The handler only touches atomics (async-signal-safe).
//!
//! It must not stop anything itself: the cores drain and exit on their own schedule.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
static SIGNALS_RECEIVED: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_signal(_signal: libc::c_int) {
    SIGNALS_RECEIVED.fetch_add(1, Ordering::SeqCst);
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGTERM and SIGINT.
pub fn install() -> std::io::Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: `action` is fully initialised (zeroed, then handler and empty mask set); the
        // handler only touches atomics, which is async-signal-safe.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether a stop was requested (by a signal or by `request_stop`).
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

/// How many SIGTERM/SIGINT signals arrived since `install`.
pub fn signals_received() -> u32 {
    SIGNALS_RECEIVED.load(Ordering::SeqCst)
}

/// Asks every core to stop, as a signal would.
pub fn request_stop() {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}
