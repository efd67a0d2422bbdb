//! A service on a thread of its own, with a current-thread tokio runtime: the qsm
//! driver and the membership service run so, so that no guest code and no other
//! task of the caller's runtime ever delays their network loops.

use std::future::Future;
use tokio::sync::oneshot;

/// A running service thread; dropping it stops the service and joins the thread.
pub(crate) struct ServiceThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServiceThread {
    /// Start thread `name`. `setup` runs inside the new runtime (so it may bind
    /// sockets and spawn tasks) and returns a value for the caller and the service's
    /// future, which runs until the stop signal it was given fires.
    /// `thread_error` turns a failure to start the thread or runtime into `E`.
    pub(crate) fn spawn<T, E, F, S>(
        name: &str,
        thread_error: fn(String) -> E,
        setup: S,
    ) -> Result<(ServiceThread, T), E>
    where
        T: Send + 'static,
        E: Send + 'static,
        F: Future<Output = ()> + 'static,
        S: FnOnce(oneshot::Receiver<()>) -> Result<(T, F), E> + Send + 'static,
    {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<T, E>>();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(thread_error(e.to_string())));
                        return;
                    }
                };
                let service = {
                    let _inside = runtime.enter();
                    setup(stop_rx)
                };
                match service {
                    Ok((value, run)) => {
                        let _ = ready_tx.send(Ok(value));
                        runtime.block_on(run);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| thread_error(e.to_string()))?;
        let value = ready_rx
            .recv()
            .map_err(|_| thread_error(format!("thread {name} died while starting")))??;
        Ok((
            ServiceThread {
                stop: Some(stop_tx),
                thread: Some(thread),
            },
            value,
        ))
    }
}

impl Drop for ServiceThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
