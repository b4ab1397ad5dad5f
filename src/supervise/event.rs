//! The main loop's channel carries `common::event::Event`; what only this layer and the
//! control layer can name travels in it as `Above`, defined here.

use crate::control::socket::{Call, Reply, Request};
use crossbeam_channel::Sender;

/// The loop's event, with this layer's news in it.
pub type Event = crate::common::event::Event<Above>;

/// News the layers below carry without opening.
pub enum Above {
    /// A control-socket request; the answer goes to the sender.
    Control(Request, Sender<Reply>),
    /// The file work of an `upgrade` or `rollback` is done (off the loop: copying and
    /// hashing a binary takes as long as the binary is large).
    Installed(crate::supervise::upgrades::files::Installed),
    /// Files in `services_dir` or `conf.d` changed and have been quiet since
    /// (`watcher.rs`).
    Watched(crate::supervise::watcher::Settled),
    /// `upgrade-self`'s checks of the new binary are done (off the loop: it runs it).
    SelfChecked(crate::supervise::upgrade_self::SelfChecked),
}

impl From<Call> for Above {
    fn from(Call(req, reply): Call) -> Above {
        Above::Control(req, reply)
    }
}
