//! Where an executor's tasks run: in this machine's worker processes (the
//! default), or on the agents of a cluster (feature `nats`).

/// Where an executor's tasks run: see [`Config::backend`](crate::Config::backend).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Backend {
    pub(crate) kind: BackendKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum BackendKind {
    /// Worker processes of this machine.
    #[default]
    Local,
    /// Agents reached through a NATS JetStream server.
    #[cfg(feature = "nats")]
    Nats {
        /// The server's URL.
        url: String,
        /// The queue (a stream of calls that agents of the same queue
        /// share).
        queue: String,
    },
}

impl Backend {
    /// Whether tasks run on other hosts.
    pub fn is_cluster(&self) -> bool {
        !matches!(self.kind, BackendKind::Local)
    }

    /// Worker processes of this machine: the default.
    pub fn local() -> Backend {
        Backend::default()
    }

    /// The agents of a cluster, reached through the NATS server at `url`
    /// (`nats://host:4222`), on the queue `loky` (see
    /// [`queue`](Self::queue)). Agents are this program started with
    /// `LOKY_AGENT=url` on each host: see the `nats` module's docs.
    #[cfg(feature = "nats")]
    pub fn nats(url: impl Into<String>) -> Backend {
        Backend {
            kind: BackendKind::Nats {
                url: url.into(),
                queue: "loky".to_owned(),
            },
        }
    }

    /// The queue this client and its agents share (`LOKY_AGENT_QUEUE` on the
    /// agents): letters, digits, `-` and `_`.
    #[cfg(feature = "nats")]
    pub fn queue(mut self, name: impl Into<String>) -> Backend {
        if let BackendKind::Nats { queue, .. } = &mut self.kind {
            *queue = name.into();
        }
        self
    }
}
