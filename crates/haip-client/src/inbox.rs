//! What passes between the application and a connection's driver: the messages it
//! receives ([`Received`], through a [`Subscription`]), the connection's [`Status`], and
//! the commands the handles send the driver.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use haip_protocol::Envelope;
use tokio::sync::{mpsc, oneshot};

use crate::error::ClientError;
use crate::topic::Pattern;
use crate::Transport;

/// Where a connection stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Disconnected,
    Connecting,
    Connected(Transport),
    Reconnecting {
        attempt: u32,
        delay: Duration,
    },
    /// Gave up (reconnect attempts exhausted) or refused for good (authentication). Final.
    Error(ClientError),
}

/// One received message, as a subscriber gets it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The frame as it arrived.
    pub raw: Bytes,
    pub message: Arc<Envelope>,
    pub meta: Meta,
    pub(crate) credit: Arc<Credit>,
}

/// Where and when a message arrived.
#[derive(Debug, Clone)]
pub struct Meta {
    pub server_id: Arc<str>,
    pub transport: Transport,
    /// `<channel>.<type>`, lower case.
    pub topic: Arc<str>,
    pub received_at_ms: u64,
}

/// Returns flow-control credit once, when the first subscriber takes the message.
#[derive(Debug)]
pub(crate) struct Credit {
    pub(crate) returned: AtomicBool,
    pub(crate) channel: Arc<str>,
    pub(crate) cost: u64,
}

/// A stream of received messages matching a topic pattern.
pub struct Subscription {
    pub(crate) rx: mpsc::UnboundedReceiver<Received>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
}

impl Subscription {
    /// The next matching message; `None` when the client is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        let item = self.rx.recv().await?;
        Some(self.taken(item))
    }

    /// A matching message that has already arrived, without waiting.
    pub fn try_recv(&mut self) -> Option<Received> {
        let item = self.rx.try_recv().ok()?;
        Some(self.taken(item))
    }

    /// The application took `item`: its credit goes back to the server.
    fn taken(&self, item: Received) -> Received {
        if !item.credit.returned.swap(true, Ordering::AcqRel) {
            let _ = self.commands.send(Command::Consumed {
                channel: item.credit.channel.clone(),
                cost: item.credit.cost,
            });
        }
        item
    }
}

pub(crate) enum Command {
    Send {
        env: Box<Envelope>,
        done: oneshot::Sender<Result<(), ClientError>>,
    },
    Subscribe(Pattern, mpsc::UnboundedSender<Received>),
    Consumed {
        channel: Arc<str>,
        cost: u64,
    },
    Close,
}
