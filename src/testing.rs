//! What the integration tests (`tests/`), benches (`benches/`) and fuzz
//! targets (`fuzz/`) use of the library, and nothing else: every other
//! module is private, so the dead-code and `unreachable_pub` lints see the
//! whole crate. Not a stable API: it changes whenever the tests do.
//!
//! The paths mirror the crate's own (`drydock::testing::cluster::lease::Claim`
//! is `crate::cluster::lease::Claim`), so a test's import is the internal
//! path with `testing::` in front. Re-exports are item by item: a type's
//! public methods come with it, a module's other items do not. To use
//! something new from a test, add it here.

pub mod agent {
    pub use crate::agent::{Agent, AgentError, AgentState};

    pub mod driver {
        #[cfg(any(test, feature = "failpoints"))]
        pub use crate::agent::driver::Failpoint;
        pub use crate::agent::driver::{
            Agent, AgentError, GatesRecord, RebootNeedRecord, StatusRecord, Wait, keys,
        };
    }

    pub mod kube_cluster {
        pub use crate::agent::kube_cluster::KubeCluster;
    }

    pub mod ports {
        pub use crate::agent::ports::{
            AgentEvent, Claim, ClaimWatch, Cluster, ClusterGates, DrainReport, DrainResult,
            DrainTimeout, GateStatus, Halt, Host, LeaseOutlook, PortError, Reporter,
        };
    }

    pub mod state {
        pub use crate::agent::state::{AgentState, Cordon, Event, Step};
    }
}

pub mod aptgate {
    pub use crate::aptgate::{UpgradeStep, reconcile_holds, wake_path};

    pub mod policy {
        pub use crate::aptgate::policy::{Change, Grants, change_of, decide, refusal_message};
    }

    pub mod protocol {
        pub use crate::aptgate::protocol::parse;
    }

    pub mod record {
        pub use crate::aptgate::record::PendingRun;
    }

    pub mod step {
        pub use crate::aptgate::step::step_running;
    }
}

pub mod cli {
    pub mod daemon {
        pub use crate::cli::daemon::kube_client;
    }

    pub mod rbac {
        pub use crate::cli::rbac::{cluster_rules, manifests, namespace_rules};
    }
}

pub mod cluster {
    pub mod annotations {
        pub use crate::cluster::annotations::{
            CLUSTER_BLOCKED, ClusterControl, FinishedReboot, HALTED, HaltedBy, KUBERNETES_VERSION,
            LAST_REBOOT_FINISHED, PAUSED, SharedBlock, clear_halt, halt, halt_by, halted_by,
            pause_cluster, pause_cluster_by, record_reboot_finished, resume_cluster, set,
        };
    }

    pub mod drain {
        pub use crate::cluster::drain::{
            BlockReason, BlockedPod, DrainError, DrainOptions, DrainProgress, DrainRules, PodRef,
            RefuseReason, SkipReason, drain, eviction_request, eviction_retries,
        };
    }

    pub mod identity {
        pub use crate::cluster::identity::{
            Enroller, GROUP, IdentityError, Progress, approve_pending, certificate_request,
            csr_object, keep_renewed, parse_cert, run_approver, wait_ready,
        };
    }

    pub mod lease {
        pub use crate::cluster::lease::{
            Claim, Decision, LeaseClient, LeaseError, LeaseKeeper, SlotClass, claim_lost, classify,
            decide, set_clock_offset,
        };
    }

    pub mod node {
        pub use crate::cluster::node::{NodeClient, NodeReport, STATE_ANNOTATION, boot_id};
    }

    pub mod observe {
        pub use crate::cluster::observe::{
            ClusterObservation, NodeView, ObserveError, ReadyStatus, observe,
        };
    }

    pub mod versions {
        pub use crate::cluster::versions::{
            kubeadm_config_version, observe_versions_as, set_target,
        };
    }
}

pub mod config {
    pub use crate::config::{
        ConfigError, NamespacedName, RawConfig, Secret, Settings, UpgradeSettings, load, load_text,
    };

    pub mod values {
        pub use crate::config::values::message_template;
    }
}

pub mod gates {
    pub use crate::gates::{
        AlertObservation, GateName, GateReport, LocalObservation, Verdict, all_pass,
        cluster_unavailable, evaluate_cluster, evaluate_cluster_verdict, evaluate_control,
        evaluate_local, first_block,
    };

    pub mod alerts {
        pub use crate::gates::alerts::{
            Alert, AlertObservation, AlertSource, SourceKind, evaluate, fetch,
        };
    }

    pub mod paused {
        pub use crate::gates::paused::LocalPause;
    }
}

pub mod host {
    pub mod boot {
        pub use crate::host::boot::BootId;
    }

    pub mod checks {
        pub use crate::host::checks::{CheckOutcome, list_checks, run_check, run_checks};
    }

    pub mod command {
        pub use crate::host::command::{
            CommandError, CommandOutput, CommandRunner, CommandSpec, HostRunner,
        };
    }

    pub mod dpkg {
        pub use crate::host::dpkg::Dpkg;
    }

    pub mod logind {
        pub use crate::host::logind::{Bus, LogindRebooter, RebootError, Rebooter};
    }

    pub mod sentinel {
        pub use crate::host::sentinel::{RebootRequest, request_reboot};
    }

    pub mod systemd {
        pub use crate::host::systemd::{Systemd, SystemdError};
    }
}

pub mod logging {
    pub use crate::logging::msgid;
}

pub mod phase {
    pub use crate::phase::Phase;
}

pub mod report {
    pub use crate::report::{
        BlockedGate, Notice, PhaseDurations, REASON_ANNOTATION, Reporter, RetryPolicy,
        STATE_ANNOTATION,
    };

    pub mod events {
        pub use crate::report::events::NodeEvents;
    }

    pub mod metrics {
        pub use crate::report::metrics::exported_names;
    }

    pub mod notice {
        pub use crate::report::notice::Notice;
    }
}

/// The Kubernetes API simulator, itself test infrastructure.
#[cfg(feature = "sim")]
pub mod sim {
    pub use crate::sim::{
        ApiStats, DaemonSetSpec, Fault, Flaky, NodeSpec, PdbSpec, PodSpec, PromMode,
        ReplicaSetSpec, Scenario, SimError, SimHandle, SimPrometheus, User, node_object,
    };

    pub mod kubeadm {
        pub use crate::sim::kubeadm::{KubeadmEffects, config_object};
    }
}

/// Whole simulated fleets (`drydock simulate`).
#[cfg(feature = "sim")]
pub mod simulate {
    pub use crate::simulate::{FleetBlock, FleetReport, SimulateOptions, run};

    pub mod host {
        pub use crate::simulate::host::{Machine, SimHost};
    }
}

pub mod store {
    pub use crate::store::{Authorization, Store, StoreError};
}

pub mod text {
    pub use crate::text::{MAX_REASON, is_unsafe};
}

pub mod upgrade {
    pub use crate::upgrade::KubeVersion;

    pub mod apt {
        pub use crate::upgrade::apt::{
            AptError, find_versions, install_exact, refresh_source, render_source, upstream_version,
        };
    }

    pub mod etcd {
        pub use crate::upgrade::etcd::{snapshot, snapshot_path};
    }

    pub mod plan {
        pub use crate::upgrade::plan::{Facts, KubeadmAction, UpgradeStep};
    }

    pub mod steps {
        pub use crate::upgrade::steps::{
            HISTORY_COMMAND, HISTORY_SNAPSHOT, Outcome, Progress, StepFailure, run_step,
        };
    }
}

pub mod verify {
    pub use crate::verify::{Problem, VerifyInputs, VerifyOutcome, describe, evaluate, gather};
}
