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

/// The variable that points `task.spawn` (the reusable executor, when it
/// is made with the default configuration) at a cluster: `local` (the
/// default), or a NATS URL such as `nats://broker:4222`, with `#queue` to
/// name the queue (feature `nats`).
pub const ENV_BACKEND: &str = "LOKY_BACKEND";

impl Backend {
    /// Where [`ENV_BACKEND`] says tasks run; this machine if it is unset.
    pub fn from_env() -> Result<Backend, crate::Error> {
        let Ok(value) = std::env::var(ENV_BACKEND) else {
            return Ok(Backend::local());
        };
        match value.trim() {
            "" | "local" => Ok(Backend::local()),
            url if url.starts_with("nats://") || url.starts_with("tls://") => {
                #[cfg(feature = "nats")]
                {
                    Ok(match url.split_once('#') {
                        Some((url, queue)) => Backend::nats(url).queue(queue),
                        None => Backend::nats(url),
                    })
                }
                #[cfg(not(feature = "nats"))]
                Err(crate::Error::Config(format!(
                    "{ENV_BACKEND}={url}: this program was built without loky's `nats` feature"
                )))
            }
            other => Err(crate::Error::Config(format!(
                "{ENV_BACKEND}={other}: expected `local` or a nats:// URL"
            ))),
        }
    }

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
