//! The per-node drydock identity: a client certificate for
//! `drydock:node:<node>` in group `drydock:nodes`, for what is shared (the
//! Lease slots, the drydock Namespace, cluster-wide reads). NodeRestriction
//! forbids the kubelet's `system:node:*` identity every Lease outside
//! `kube-node-lease`, so the lock cannot be taken with it.
//!
//! The node makes its ECDSA P-256 key itself (0600, never leaves the node),
//! asks for a certificate through the CertificateSigningRequest API with
//! the kubelet's credential (signer `kubernetes.io/kube-apiserver-client`,
//! `generateName`, a bounded `expirationSeconds`, client auth only), waits
//! for the controller-manager to sign it after approval, and asks again
//! before it expires.
//!
//! The approval is the security boundary: that signer signs any subject
//! but `system:masters`, and any node may ask for any name. [`decide`]
//! approves only a request whose requester (`spec.username`, set by the
//! API server, never the CSR's name, which anyone can squat) is
//! `system:node:N` and whose subject is exactly `CN=drydock:node:N,
//! O=drydock:nodes` for the same N, without other names or extensions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{AuthInfo, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use tracing::{debug, info, warn};
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};

/// The signer whose certificates the API server accepts as client credentials.
const SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// The group every drydock identity belongs to (the RBAC subject).
pub const GROUP: &str = "drydock:nodes";
/// `drydock:node:<node>`
pub(crate) const USER_PREFIX: &str = "drydock:node:";
const NODE_USER_PREFIX: &str = "system:node:";
const NODES_GROUP: &str = "system:nodes";
/// What the node asks for; the approver accepts up to [`MAX_EXPIRATION`].
const REQUESTED_EXPIRATION: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_EXPIRATION: Duration = Duration::from_secs(31 * 24 * 3600);
/// The API server's own lower bound for `expirationSeconds`.
const MIN_EXPIRATION: Duration = Duration::from_secs(600);
const ALLOWED_USAGES: [&str; 2] = ["digital signature", "client auth"];
const APPROVED_REASON: &str = "DrydockNodeIdentity";

const KEY_FILE: &str = "key.pem";
const CERT_FILE: &str = "cert.pem";
const PENDING_FILE: &str = "pending-csr";
/// The last request that was denied: no new one for [`DENIED_BACKOFF`].
const DENIED_FILE: &str = "denied-csr";
const DENIED_BACKOFF: Duration = Duration::from_secs(600);
const KUBECONFIG_FILE: &str = "kubeconfig";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{action} {path}: {source}")]
    File {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the drydock identity key {path} is unusable: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("making the key or certificate request: {0}")]
    Crypto(#[from] rcgen::Error),
    #[error("{action}: {source}")]
    Api { action: String, source: kube::Error },
    #[error("certificate from CSR {csr} is unusable: {reason}")]
    BadCertificate { csr: String, reason: String },
    #[error("the drydock identity request CSR {csr} was denied: {reason}")]
    Denied { csr: String, reason: String },
    #[error("reading the kubelet kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> IdentityError {
    let action = action.into();
    move |source| IdentityError::Api { action, source }
}

fn user_name(node: &str) -> String {
    format!("{USER_PREFIX}{node}")
}

// --- the approval decision (pure) -----------------------------------------

/// What the approver does with one CertificateSigningRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// A drydock identity request, correct in every respect, by node `node`.
    Approve { node: String },
    /// Not a drydock identity request (another signer or subject), or
    /// already decided: none of our business.
    NotOurs,
    /// Looks like a drydock identity request but breaks a rule: left for
    /// a person, with the reason.
    Refuse(String),
}

fn is_decided(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed"))
        })
}

/// The subject's attributes as (short name, value); unknown types by OID.
fn subject_parts(req: &X509CertificationRequest<'_>) -> Result<Vec<(String, String)>, String> {
    let mut parts = vec![];
    for rdn in req.certification_request_info.subject.iter() {
        for attr in rdn.iter() {
            let kind = match attr.attr_type() {
                t if *t == x509_parser::oid_registry::OID_X509_COMMON_NAME => "CN".to_string(),
                t if *t == x509_parser::oid_registry::OID_X509_ORGANIZATION_NAME => "O".to_string(),
                t => t.to_id_string(),
            };
            let value = attr
                .as_str()
                .map_err(|e| format!("subject attribute {kind} is not a string: {e}"))?;
            parts.push((kind, value.to_string()));
        }
    }
    Ok(parts)
}

/// Decides on one request. Pure: the object in, the verdict out.
pub(crate) fn decide(csr: &CertificateSigningRequest) -> Decision {
    if is_decided(csr) || csr.spec.signer_name != SIGNER {
        return Decision::NotOurs;
    }
    let request = csr.spec.request.0.as_slice();
    let der = match x509_parser::pem::parse_x509_pem(request) {
        Ok((_, pem)) if pem.label == "CERTIFICATE REQUEST" => pem.contents,
        _ => return Decision::NotOurs,
    };
    let Ok((rest, req)) = X509CertificationRequest::from_der(&der) else {
        return Decision::NotOurs;
    };
    let Ok(subject) = subject_parts(&req) else {
        return Decision::NotOurs;
    };
    let cns: Vec<&str> = subject
        .iter()
        .filter(|(k, _)| k == "CN")
        .map(|(_, v)| v.as_str())
        .collect();
    // Only requests naming a drydock identity are ours to judge.
    if !cns.iter().any(|cn| cn.starts_with(USER_PREFIX)) {
        return Decision::NotOurs;
    }
    let refuse = |why: String| Decision::Refuse(why);
    if !rest.is_empty() {
        return refuse("trailing bytes after the request".into());
    }
    let username = csr.spec.username.as_deref().unwrap_or_default();
    let Some(node) = username.strip_prefix(NODE_USER_PREFIX) else {
        return refuse(format!(
            "requested by {username:?}, not by a node (system:node:<name>)"
        ));
    };
    if crate::config::values::dns_subdomain(node).is_err() {
        return refuse(format!("requester {username:?} is not a valid node name"));
    }
    let groups = csr.spec.groups.as_deref().unwrap_or_default();
    if !groups.iter().any(|g| g == NODES_GROUP) {
        return refuse(format!(
            "requester {username} is not in group {NODES_GROUP}"
        ));
    }
    let expected_cn = user_name(node);
    let expected = vec![
        ("CN".to_string(), expected_cn.clone()),
        ("O".to_string(), GROUP.to_string()),
    ];
    let mut sorted = subject.clone();
    sorted.sort();
    if sorted != expected {
        let shown: Vec<String> = subject.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return refuse(format!(
            "subject {} is not exactly CN={expected_cn}, O={GROUP} for requester {username}",
            shown.join(", ")
        ));
    }
    // No names or extensions of any kind, and no other attributes.
    if req
        .requested_extensions()
        .is_some_and(|mut e| e.next().is_some())
    {
        return refuse("the request asks for extensions (names or usages)".into());
    }
    let other_attributes = req
        .certification_request_info
        .iter_attributes()
        .filter(|a| {
            !matches!(
                a.parsed_attribute(),
                x509_parser::cri_attributes::ParsedCriAttribute::ExtensionRequest(_)
            )
        })
        .count();
    if other_attributes > 0 {
        return refuse("the request carries attributes besides an extension request".into());
    }
    let usages = csr.spec.usages.as_deref().unwrap_or_default();
    if !usages.iter().any(|u| u == "client auth") {
        return refuse("usage \"client auth\" is not requested".into());
    }
    if let Some(u) = usages
        .iter()
        .find(|u| !ALLOWED_USAGES.contains(&u.as_str()))
    {
        return refuse(format!(
            "usage {u:?} is more than digital signature and client auth"
        ));
    }
    match csr.spec.expiration_seconds {
        None => return refuse("no expirationSeconds (the signer's default is a year)".into()),
        Some(s) if s < MIN_EXPIRATION.as_secs() as i32 || s > MAX_EXPIRATION.as_secs() as i32 => {
            return refuse(format!(
                "expirationSeconds {s} is outside {}..={}",
                MIN_EXPIRATION.as_secs(),
                MAX_EXPIRATION.as_secs()
            ));
        }
        Some(_) => {}
    }
    Decision::Approve {
        node: node.to_string(),
    }
}

/// `csr` with an Approved condition added (for the `approval` subresource).
pub(crate) fn approved(
    mut csr: CertificateSigningRequest,
    node: &str,
    now: Timestamp,
) -> CertificateSigningRequest {
    let status = csr.status.get_or_insert_with(Default::default);
    let time = Time(now);
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(CertificateSigningRequestCondition {
            type_: "Approved".into(),
            status: "True".into(),
            reason: Some(APPROVED_REASON.into()),
            message: Some(format!(
                "drydock approved the drydock identity of node {node}, requested by system:node:{node}"
            )),
            last_update_time: Some(time.clone()),
            last_transition_time: Some(time),
        });
    csr
}

/// Approves one request through the `approval` subresource; the
/// resourceVersion it carries makes a concurrent change a conflict.
pub(crate) async fn approve(
    admin: &kube::Client,
    csr: CertificateSigningRequest,
    node: &str,
) -> Result<(), IdentityError> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    let api: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let body = approved(csr, node, Timestamp::now());
    api.replace_subresource("approval", &name, &PostParams::default(), &body)
        .await
        .map_err(api_err(format!("approving CSR {name} of node {node}")))?;
    info!(csr = %name, node, "approved the drydock identity request");
    Ok(())
}

/// One pass over every request: approves what [`decide`] approves (only
/// for `only_node` when given); returns (approved, refused with reasons).
pub async fn approve_pending(
    admin: &kube::Client,
    only_node: Option<&str>,
) -> Result<(Vec<String>, Vec<(String, String)>), IdentityError> {
    approve_pass(admin, only_node).await.map(|(a, r, _)| (a, r))
}

/// [`approve_pending`], also returning the list's resourceVersion.
async fn approve_pass(
    admin: &kube::Client,
    only_node: Option<&str>,
) -> Result<(Vec<String>, Vec<(String, String)>, String), IdentityError> {
    let api: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(api_err("listing CertificateSigningRequests"))?;
    let rv = list.metadata.resource_version.clone().unwrap_or_default();
    let mut done = vec![];
    let mut refused = vec![];
    for csr in list.items {
        let name = csr.metadata.name.clone().unwrap_or_default();
        match decide(&csr) {
            Decision::Approve { node } if only_node.is_none_or(|n| n == node) => {
                approve(admin, csr, &node).await?;
                done.push(name);
            }
            // By hand for one node: that node's own requests only.
            Decision::Refuse(why)
                if only_node.is_none_or(|n| {
                    csr.spec.username.as_deref() == Some(&format!("{NODE_USER_PREFIX}{n}"))
                }) =>
            {
                refused.push((name, why))
            }
            _ => {}
        }
    }
    Ok((done, refused, rv))
}

/// The approver on a control-plane node: approves at start and whenever a
/// request appears or changes (a watch from the list), until dropped.
pub async fn run_approver(admin: kube::Client) {
    use futures::StreamExt;
    let api: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let mut warned = std::collections::BTreeSet::new();
    loop {
        let rv = match approve_pass(&admin, None).await {
            Ok((_, refused, rv)) => {
                for (name, why) in refused {
                    if warned.insert(name.clone()) {
                        warn!(csr = %name, reason = %why, "drydock identity request not approved; left for a person");
                    }
                }
                rv
            }
            Err(e) => {
                warn!(error = %e, "approving drydock identity requests failed; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        // Wake on the next change (or after a while regardless).
        match api.watch(&WatchParams::default().timeout(290), &rv).await {
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(WatchEvent::Added(_) | WatchEvent::Modified(_)) => break,
                        Ok(WatchEvent::Error(_)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
            Err(e) => {
                debug!(error = %e, "watching CertificateSigningRequests failed");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

// --- the node's side: key, request, certificate ----------------------------

/// Where this node's identity stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A valid certificate; `kubeconfig` uses it. `renewing`: a renewal
    /// request is already out.
    Ready {
        kubeconfig: PathBuf,
        not_after: Timestamp,
        renew_at: Timestamp,
        renewing: Option<String>,
    },
    /// No usable certificate yet: waiting for request `csr` to be approved.
    Waiting { csr: String },
}

impl Progress {
    /// The status line while the node has no identity yet.
    pub(crate) fn status_line(&self) -> Option<String> {
        match self {
            Progress::Waiting { csr } => Some(format!(
                "waiting: drydock identity not approved yet (CSR {csr})"
            )),
            Progress::Ready { .. } => None,
        }
    }
}

/// A certificate's facts that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub common_name: String,
    pub public_key: Vec<u8>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

pub fn parse_cert(pem: &[u8]) -> Result<CertFacts, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not PEM: {e}"))?;
    let (_, cert) =
        X509Certificate::from_der(&pem.contents).map_err(|e| format!("not X.509: {e}"))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let ts = |t: i64| Timestamp::from_second(t).map_err(|e| e.to_string());
    Ok(CertFacts {
        common_name,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        not_before: ts(cert.validity().not_before.timestamp())?,
        not_after: ts(cert.validity().not_after.timestamp())?,
    })
}

/// When to ask for the next certificate: two thirds into its lifetime.
fn renew_at(facts: &CertFacts) -> Timestamp {
    let life = facts.not_after.as_second() - facts.not_before.as_second();
    Timestamp::from_second(facts.not_before.as_second() + life * 2 / 3).unwrap_or(facts.not_before)
}

/// The certificate request for `node`, signed with `key`.
pub fn certificate_request(key: &KeyPair, node: &str) -> Result<String, IdentityError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, user_name(node));
    dn.push(DnType::OrganizationName, GROUP);
    params.distinguished_name = dn;
    Ok(params.serialize_request(key)?.pem()?)
}

/// The CertificateSigningRequest object for `node`'s request.
pub fn csr_object(node: &str, request_pem: &str) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: ObjectMeta {
            // Names are anyone's to take: let the server pick one.
            generate_name: Some(format!("drydock-{node}-")),
            labels: Some(
                [("app.kubernetes.io/name".to_string(), "drydock".to_string())]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request_pem.as_bytes().to_vec()),
            signer_name: SIGNER.into(),
            expiration_seconds: Some(REQUESTED_EXPIRATION.as_secs() as i32),
            usages: Some(ALLOWED_USAGES.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        },
        status: None,
    }
}

fn file_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError {
    let path = path.to_path_buf();
    move |source| IdentityError::File {
        action,
        path,
        source,
    }
}

/// Writes `data` to `path` atomically with mode 0600.
fn write_private(path: &Path, data: &[u8]) -> Result<(), IdentityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(file_err("creating", &tmp))?;
    f.write_all(data).map_err(file_err("writing", &tmp))?;
    f.sync_all().map_err(file_err("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(file_err("renaming into place", path))
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, IdentityError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_err("reading", path)(e)),
    }
}

/// This node's enrolment: files in `dir`, requests made with the kubelet's
/// credential.
pub struct Enroller {
    kubelet: kube::Client,
    kubelet_kubeconfig: PathBuf,
    node: String,
    dir: PathBuf,
}

impl Enroller {
    pub fn new(kubelet: kube::Client, kubelet_kubeconfig: &Path, node: &str, dir: &Path) -> Self {
        Enroller {
            kubelet,
            kubelet_kubeconfig: kubelet_kubeconfig.to_path_buf(),
            node: node.to_string(),
            dir: dir.to_path_buf(),
        }
    }

    fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join(KUBECONFIG_FILE)
    }

    /// The key, made on first use (ECDSA P-256, 0600, in a 0700 directory).
    fn key(&self) -> Result<KeyPair, IdentityError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(file_err("creating", &self.dir))?;
        let path = self.dir.join(KEY_FILE);
        if let Some(pem) = read_opt(&path)? {
            let mode = std::fs::metadata(&path)
                .map_err(file_err("inspecting", &path))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(IdentityError::BadKey {
                    path,
                    reason: format!("mode {:o} lets others read it (want 0600)", mode & 0o777),
                });
            }
            let text = String::from_utf8(pem).map_err(|_| IdentityError::BadKey {
                path: path.clone(),
                reason: "not PEM text".into(),
            })?;
            return KeyPair::from_pem(&text).map_err(|e| IdentityError::BadKey {
                path,
                reason: e.to_string(),
            });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        write_private(&path, key.serialize_pem().as_bytes())?;
        info!(node = %self.node, path = %path.display(), "made the drydock identity key");
        Ok(key)
    }

    /// The stored certificate, if it belongs to this key and node.
    fn current(&self, key: &KeyPair) -> Result<Option<CertFacts>, IdentityError> {
        let path = self.dir.join(CERT_FILE);
        let Some(pem) = read_opt(&path)? else {
            return Ok(None);
        };
        match parse_cert(&pem) {
            Ok(f)
                if f.public_key == key.public_key_raw()
                    && f.common_name == user_name(&self.node) =>
            {
                Ok(Some(f))
            }
            Ok(_) => {
                warn!(path = %path.display(), "stored drydock certificate is for another key or node; ignoring it");
                Ok(None)
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "stored drydock certificate is unreadable; ignoring it");
                Ok(None)
            }
        }
    }

    /// One step: use, fetch or request the certificate. Idempotent; call
    /// it until it is Ready, and again later to renew.
    pub async fn step(&self, now: Timestamp) -> Result<Progress, IdentityError> {
        let key = self.key()?;
        let current = self.current(&key)?.filter(|c| now < c.not_after);
        if let Some(c) = &current
            && now < renew_at(c)
        {
            let _ = std::fs::remove_file(self.dir.join(PENDING_FILE));
            self.write_kubeconfig()?;
            return Ok(self.ready(c, None));
        }
        let pending_path = self.dir.join(PENDING_FILE);
        let api: Api<CertificateSigningRequest> = Api::all(self.kubelet.clone());
        let pending = read_opt(&pending_path)?
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .filter(|n| !n.is_empty());
        if let Some(name) = pending {
            let csr = api
                .get_opt(&name)
                .await
                .map_err(api_err(format!("reading CSR {name}")))?;
            match csr {
                None => {
                    info!(csr = %name, "the drydock identity request is gone; asking again");
                }
                Some(csr) => {
                    let status = csr.status.unwrap_or_default();
                    let cond = status.conditions.unwrap_or_default();
                    if let Some(c) = cond
                        .iter()
                        .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
                    {
                        let reason = format!(
                            "{}: {}",
                            c.type_,
                            c.message.clone().or(c.reason.clone()).unwrap_or_default()
                        );
                        write_private(
                            &self.dir.join(DENIED_FILE),
                            format!("{name}\n{reason}").as_bytes(),
                        )?;
                        let _ = std::fs::remove_file(&pending_path);
                        return Err(IdentityError::Denied { csr: name, reason });
                    }
                    if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
                        let facts = parse_cert(&cert.0).map_err(|reason| {
                            IdentityError::BadCertificate {
                                csr: name.clone(),
                                reason,
                            }
                        })?;
                        if facts.public_key != key.public_key_raw()
                            || facts.common_name != user_name(&self.node)
                        {
                            return Err(IdentityError::BadCertificate {
                                csr: name,
                                reason: "it is not for this node's key and name".into(),
                            });
                        }
                        write_private(&self.dir.join(CERT_FILE), &cert.0)?;
                        let _ = std::fs::remove_file(&pending_path);
                        self.write_kubeconfig()?;
                        info!(csr = %name, not_after = %facts.not_after, "drydock identity certificate received");
                        return Ok(self.ready(&facts, None));
                    }
                    return Ok(match &current {
                        Some(c) => self.ready(c, Some(name)),
                        None => Progress::Waiting { csr: name },
                    });
                }
            }
        }
        // A person said no: ask again only after a while, not every retry.
        let denied_path = self.dir.join(DENIED_FILE);
        if let Some(text) = read_opt(&denied_path)? {
            let age = std::fs::metadata(&denied_path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            if age < DENIED_BACKOFF {
                let text = String::from_utf8_lossy(&text);
                let (csr, reason) = text.split_once('\n').unwrap_or((&text, ""));
                return Err(IdentityError::Denied {
                    csr: csr.to_string(),
                    reason: format!("{reason} (asking again in at most 10 minutes)"),
                });
            }
            let _ = std::fs::remove_file(&denied_path);
        }
        let request = certificate_request(&key, &self.node)?;
        let created = api
            .create(&PostParams::default(), &csr_object(&self.node, &request))
            .await
            .map_err(api_err(format!(
                "requesting the drydock identity of node {} (CertificateSigningRequest)",
                self.node
            )))?;
        let name = created.metadata.name.unwrap_or_default();
        write_private(&pending_path, name.as_bytes())?;
        info!(csr = %name, node = %self.node, "requested the drydock identity; waiting for approval");
        Ok(match &current {
            Some(c) => {
                self.write_kubeconfig()?;
                self.ready(c, Some(name))
            }
            None => Progress::Waiting { csr: name },
        })
    }

    fn ready(&self, c: &CertFacts, renewing: Option<String>) -> Progress {
        Progress::Ready {
            kubeconfig: self.kubeconfig_path(),
            not_after: c.not_after,
            renew_at: renew_at(c),
            renewing,
        }
    }

    /// A kubeconfig for the identity: the kubelet's cluster (server, CA),
    /// our certificate and key by path (kubectl can use it too).
    fn write_kubeconfig(&self) -> Result<(), IdentityError> {
        let bad = |reason: String| IdentityError::Kubeconfig {
            path: self.kubelet_kubeconfig.clone(),
            reason,
        };
        let kubelet =
            Kubeconfig::read_from(&self.kubelet_kubeconfig).map_err(|e| bad(e.to_string()))?;
        let context_name = kubelet
            .current_context
            .clone()
            .or_else(|| kubelet.contexts.first().map(|c| c.name.clone()))
            .ok_or_else(|| bad("no context".into()))?;
        let cluster_name = kubelet
            .contexts
            .iter()
            .find(|c| c.name == context_name)
            .and_then(|c| c.context.as_ref())
            .map(|c| c.cluster.clone())
            .ok_or_else(|| bad(format!("context {context_name:?} is missing")))?;
        let mut cluster = kubelet
            .clusters
            .iter()
            .find(|c| c.name == cluster_name)
            .and_then(|c| c.cluster.clone())
            .ok_or_else(|| bad(format!("cluster {cluster_name:?} is missing")))?;
        // A relative CA path is relative to the kubelet's kubeconfig.
        if let Some(ca) = &cluster.certificate_authority
            && Path::new(ca).is_relative()
            && let Some(parent) = self.kubelet_kubeconfig.parent()
        {
            cluster.certificate_authority = Some(parent.join(ca).to_string_lossy().into_owned());
        }
        let user = user_name(&self.node);
        let config = Kubeconfig {
            clusters: vec![NamedCluster {
                name: cluster_name.clone(),
                cluster: Some(cluster),
                other: Default::default(),
            }],
            auth_infos: vec![NamedAuthInfo {
                name: user.clone(),
                auth_info: Some(AuthInfo {
                    client_certificate: Some(
                        self.dir.join(CERT_FILE).to_string_lossy().into_owned(),
                    ),
                    client_key: Some(self.dir.join(KEY_FILE).to_string_lossy().into_owned()),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            contexts: vec![NamedContext {
                name: user.clone(),
                context: Some(Context {
                    cluster: cluster_name,
                    user: Some(user.clone()),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            current_context: Some(user),
            api_version: Some("v1".into()),
            kind: Some("Config".into()),
            ..Default::default()
        };
        let text = serde_json::to_vec_pretty(&config).expect("a kubeconfig serializes");
        let path = self.kubeconfig_path();
        if read_opt(&path)?.as_deref() != Some(text.as_slice()) {
            write_private(&path, &text)?;
        }
        Ok(())
    }
}

/// Steps the enrolment until a certificate is in hand, telling `status`
/// what it waits for; errors are reported and retried after `retry`.
pub async fn wait_ready(enroller: &Enroller, status: impl Fn(&str), retry: Duration) -> Progress {
    let mut last = String::new();
    loop {
        let line = match enroller.step(Timestamp::now()).await {
            Ok(p @ Progress::Ready { .. }) => return p,
            Ok(p) => p.status_line().unwrap_or_default(),
            Err(e) => {
                warn!(error = %e, "drydock identity not ready; retrying");
                format!("waiting: drydock identity: {e}")
            }
        };
        if line != last {
            status(&line);
            last = line;
        }
        tokio::time::sleep(retry).await;
    }
}

/// Renews the certificate before it expires: wakes at the renewal time,
/// requests, and calls `renewed` once the new certificate is in place.
pub async fn keep_renewed(enroller: Enroller, renewed: impl Fn(), retry: Duration) {
    let mut current: Option<Timestamp> = None;
    loop {
        let wait = match enroller.step(Timestamp::now()).await {
            Ok(Progress::Ready {
                not_after,
                renew_at,
                renewing,
                ..
            }) => {
                if current.is_some_and(|c| c != not_after) {
                    info!(%not_after, "drydock identity renewed");
                    renewed();
                }
                current = Some(not_after);
                if renewing.is_some() {
                    retry
                } else {
                    let secs = (renew_at.as_second() - Timestamp::now().as_second()).max(1);
                    Duration::from_secs(secs as u64).max(retry)
                }
            }
            Ok(Progress::Waiting { csr }) => {
                warn!(csr = %csr, "the drydock identity certificate expired before renewal was approved");
                retry
            }
            Err(e) => {
                warn!(error = %e, "renewing the drydock identity failed; retrying");
                retry
            }
        };
        tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
    }
}

/// The kubeconfig of the drydock identity as configured: the
/// administrator's own, or the enrolled one.
pub(crate) fn identity_kubeconfig(settings: &crate::config::Settings) -> PathBuf {
    settings
        .node
        .identity_kubeconfig
        .clone()
        .unwrap_or_else(|| settings.node.identity_dir.join(KUBECONFIG_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(username: &str, groups: &[&str], pem: &str) -> CertificateSigningRequest {
        let mut csr = csr_object("w1", pem);
        csr.metadata.name = Some("drydock-w1-abcde".into());
        csr.spec.username = Some(username.into());
        csr.spec.groups = Some(groups.iter().map(|s| s.to_string()).collect());
        csr
    }

    fn key() -> KeyPair {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
    }

    fn request_with(f: impl FnOnce(&mut CertificateParams)) -> String {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "drydock:node:w1");
        dn.push(DnType::OrganizationName, GROUP);
        params.distinguished_name = dn;
        f(&mut params);
        params.serialize_request(&key()).unwrap().pem().unwrap()
    }

    const NODES: &[&str] = &["system:nodes", "system:authenticated"];

    #[test]
    fn approves_exactly_the_nodes_own_request() {
        let pem = certificate_request(&key(), "w1").unwrap();
        let csr = csr_for("system:node:w1", NODES, &pem);
        assert_eq!(decide(&csr), Decision::Approve { node: "w1".into() });
    }

    #[test]
    fn another_nodes_name_is_refused() {
        let pem = certificate_request(&key(), "w2").unwrap();
        let csr = csr_for("system:node:w1", NODES, &pem);
        assert!(matches!(decide(&csr), Decision::Refuse(r) if r.contains("CN=drydock:node:w1")));
    }

    #[test]
    fn the_csr_name_does_not_matter_only_the_requester() {
        let pem = certificate_request(&key(), "w1").unwrap();
        let mut csr = csr_for("system:node:w2", NODES, &pem);
        csr.metadata.name = Some("drydock-w1-squatted".into());
        assert!(matches!(decide(&csr), Decision::Refuse(_)));
    }

    #[test]
    fn requesters_that_are_not_nodes_are_refused() {
        let pem = certificate_request(&key(), "w1").unwrap();
        for (user, groups) in [
            ("admin", &["system:masters"][..]),
            ("system:serviceaccount:kube-system:x", NODES),
            ("system:node:w1", &["system:authenticated"][..]),
            ("system:node:", NODES),
        ] {
            let csr = csr_for(user, groups, &pem);
            assert!(
                matches!(decide(&csr), Decision::Refuse(_)),
                "{user} {groups:?}"
            );
        }
    }

    #[test]
    fn subjects_must_be_exact() {
        for pem in [
            request_with(|p| {
                p.distinguished_name
                    .push(DnType::OrganizationName, "system:masters")
            }),
            request_with(|p| {
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, "drydock:node:w1");
                dn.push(DnType::OrganizationName, "system:masters");
                p.distinguished_name = dn;
            }),
            request_with(|p| {
                p.distinguished_name
                    .push(DnType::OrganizationalUnitName, "x")
            }),
            request_with(|p| {
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, "drydock:node:w1");
                p.distinguished_name = dn;
            }),
        ] {
            let csr = csr_for("system:node:w1", NODES, &pem);
            assert!(matches!(decide(&csr), Decision::Refuse(_)), "{pem}");
        }
    }

    #[test]
    fn names_and_extensions_are_refused() {
        for pem in [
            request_with(|p| {
                p.subject_alt_names = vec![rcgen::SanType::DnsName("w1".try_into().unwrap())]
            }),
            request_with(|p| {
                p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]
            }),
            request_with(|p| p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)),
        ] {
            let csr = csr_for("system:node:w1", NODES, &pem);
            assert!(
                matches!(decide(&csr), Decision::Refuse(r) if r.contains("extensions")),
                "{pem}"
            );
        }
    }

    #[test]
    fn usages_signer_and_expiry_are_bounded() {
        let pem = certificate_request(&key(), "w1").unwrap();
        let base = csr_for("system:node:w1", NODES, &pem);

        let mut c = base.clone();
        c.spec.usages = Some(vec!["client auth".into(), "server auth".into()]);
        assert!(matches!(decide(&c), Decision::Refuse(r) if r.contains("server auth")));
        let mut c = base.clone();
        c.spec.usages = Some(vec!["digital signature".into()]);
        assert!(matches!(decide(&c), Decision::Refuse(_)));
        let mut c = base.clone();
        c.spec.usages = Some(vec!["client auth".into()]);
        assert!(matches!(decide(&c), Decision::Approve { .. }));

        for secs in [None, Some(599), Some(MAX_EXPIRATION.as_secs() as i32 + 1)] {
            let mut c = base.clone();
            c.spec.expiration_seconds = secs;
            assert!(matches!(decide(&c), Decision::Refuse(_)), "{secs:?}");
        }

        let mut c = base.clone();
        c.spec.signer_name = "kubernetes.io/kube-apiserver-client-kubelet".into();
        assert_eq!(decide(&c), Decision::NotOurs);
    }

    #[test]
    fn decided_and_foreign_requests_are_not_ours() {
        let pem = certificate_request(&key(), "w1").unwrap();
        let mut c = csr_for("system:node:w1", NODES, &pem);
        c = approved(c, "w1", Timestamp::now());
        assert_eq!(decide(&c), Decision::NotOurs);

        // A kubelet's own client certificate request.
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "system:node:w1");
        dn.push(DnType::OrganizationName, "system:nodes");
        params.distinguished_name = dn;
        let pem = params.serialize_request(&key()).unwrap().pem().unwrap();
        assert_eq!(
            decide(&csr_for("system:node:w1", NODES, &pem)),
            Decision::NotOurs
        );

        let garbage = csr_for("system:node:w1", NODES, "not a request");
        assert_eq!(decide(&garbage), Decision::NotOurs);
    }

    #[test]
    fn renewal_is_two_thirds_into_the_lifetime() {
        let f = CertFacts {
            common_name: "drydock:node:w1".into(),
            public_key: vec![],
            not_before: Timestamp::from_second(1000).unwrap(),
            not_after: Timestamp::from_second(1300).unwrap(),
        };
        assert_eq!(renew_at(&f), Timestamp::from_second(1200).unwrap());
    }
}
