//! `drydock rbac`, `drydock completions`, `drydock manpage` through the real binary.

use std::process::Command;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};

fn drydock(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_drydock"))
        .args(args)
        .env_remove("DRYDOCK_CONFIG")
        .current_dir(dir.path())
        .output()
        .expect("drydock runs")
}

fn stdout(args: &[&str]) -> String {
    let out = drydock(args);
    assert!(
        out.status.success(),
        "drydock {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups
            .as_ref()
            .is_some_and(|g| g.iter().any(|g| g == group))
            && r.resources
                .as_ref()
                .is_some_and(|x| x.iter().any(|x| x == resource))
            && r.verbs.iter().any(|v| v == verb)
    })
}

#[test]
fn report_rbac_is_least_privilege_for_the_drydock_identity() {
    let text = stdout(&["rbac", "--namespace", "patching"]);
    let list: serde_json::Value = serde_json::from_str(&text).expect("one JSON List");
    assert_eq!(list["kind"], "List");
    let docs = list["items"].as_array().unwrap();
    let kinds: Vec<_> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    let ns: Namespace = serde_json::from_value(docs[0].clone()).unwrap();
    assert_eq!(ns.metadata.name.as_deref(), Some("patching"));

    let cr: ClusterRole = serde_json::from_value(docs[1].clone()).unwrap();
    let rules = cr.rules.unwrap();
    for (group, resource, verb) in [
        ("", "nodes", "list"),
        ("", "pods", "get"),
        ("apps", "daemonsets", "get"),
        ("policy", "poddisruptionbudgets", "list"),
    ] {
        assert!(
            allows(&rules, group, resource, verb),
            "{group}/{resource} {verb}"
        );
    }
    // What the kubelet's credential does (its own Node, pods and Events)
    // or what must stay narrow is not granted cluster-wide.
    for (group, resource, verb) in [
        ("", "nodes", "patch"),
        ("", "pods", "delete"),
        ("", "pods/eviction", "create"),
        ("", "events", "create"),
        ("events.k8s.io", "events", "create"),
        ("coordination.k8s.io", "leases", "update"),
    ] {
        assert!(
            !allows(&rules, group, resource, verb),
            "{group}/{resource} {verb}"
        );
    }
    let ns_rule = rules
        .iter()
        .find(|r| r.resources.as_deref() == Some(&["namespaces".to_string()]))
        .unwrap();
    assert_eq!(
        ns_rule.resource_names.as_deref(),
        Some(&["patching".to_string()][..])
    );
    // watch: the upgrade target without polling, by name only.
    assert_eq!(ns_rule.verbs, ["get", "patch", "watch"]);

    let crb: ClusterRoleBinding = serde_json::from_value(docs[2].clone()).unwrap();
    assert_eq!(crb.role_ref.name, "drydock:node");
    let subject = &crb.subjects.unwrap()[0];
    assert_eq!(
        (subject.kind.as_str(), subject.name.as_str()),
        ("Group", "drydock:nodes")
    );

    let role: Role = serde_json::from_value(docs[3].clone()).unwrap();
    assert_eq!(role.metadata.namespace.as_deref(), Some("patching"));
    let lease_rules = role.rules.unwrap();
    for verb in ["get", "list", "watch", "create", "update"] {
        assert!(
            allows(&lease_rules, "coordination.k8s.io", "leases", verb),
            "{verb}"
        );
    }
    assert!(!allows(
        &lease_rules,
        "coordination.k8s.io",
        "leases",
        "delete"
    ));
    let rb: RoleBinding = serde_json::from_value(docs[4].clone()).unwrap();
    assert_eq!(rb.role_ref.kind, "Role");
    assert_eq!(rb.metadata.namespace.as_deref(), Some("patching"));

    let policy = &docs[5]["spec"];
    assert_eq!(
        policy["matchConstraints"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "patching"
    );
    assert_eq!(docs[6]["spec"]["validationActions"][0], "Deny");
}

#[test]
fn report_rbac_namespace_from_config_and_bad_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("drydock.toml");
    std::fs::write(&config, "[lease]\nnamespace = \"fleet\"\n").unwrap();
    let text = stdout(&["rbac", "--config", config.to_str().unwrap()]);
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["items"][0]["metadata"]["name"], "fleet", "{text}");
    assert_eq!(list["items"][3]["metadata"]["namespace"], "fleet", "{text}");
    let out = drydock(&["rbac", "--namespace", "Not_A_Namespace"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--namespace") && err.contains("Not_A_Namespace"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn report_completions_and_manpage() {
    let bash = stdout(&["completions", "bash"]);
    assert!(bash.contains("check-config") && bash.contains("rbac"));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("drydock.bash");
    std::fs::write(&script, &bash).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(
        syntax.success(),
        "bash completion script has a syntax error"
    );
    for shell in ["zsh", "fish"] {
        assert!(
            stdout(&["completions", shell]).contains("drydock"),
            "{shell}"
        );
    }
    assert!(!drydock(&["completions", "tcsh"]).status.success());

    let man = stdout(&["manpage"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH drydock 1"),
        "{man}"
    );
    assert!(man.contains(".TH drydock 1"));
    for sub in ["check\\-config", "rbac", "completions", "manpage"] {
        assert!(man.contains(sub), "man page lacks {sub}");
    }
}

/// The drop-ins in examples/cloud-init.yaml are valid drydock configuration.
#[test]
fn report_cloud_init_example_config_is_valid() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cloud-init.yaml"),
    )
    .unwrap();
    assert!(text.starts_with("#cloud-config\n"));
    let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let packages = doc["packages"].as_array().unwrap();
    assert!(packages.iter().any(|p| p.as_str() == Some("drydock")));
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("drydock.toml");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/drydock.toml"),
        &main,
    )
    .unwrap();
    let drop_ins = dir.path().join("drydock.toml.d");
    std::fs::create_dir(&drop_ins).unwrap();
    let mut written = 0;
    for file in doc["write_files"].as_array().unwrap() {
        let path = file["path"].as_str().unwrap();
        if let Some(name) = path.strip_prefix("/etc/drydock/drydock.toml.d/") {
            std::fs::write(drop_ins.join(name), file["content"].as_str().unwrap()).unwrap();
            written += 1;
        }
    }
    assert_eq!(written, 2);
    let out = stdout(&["check-config", "--config", main.to_str().unwrap()]);
    assert!(out.contains("configuration OK"), "{out}");
    assert!(out.contains("1 maintenance windows"), "{out}");

    // And a broken drop-in is caught the same way.
    std::fs::write(drop_ins.join("50-bad.toml"), "[lease]\nconcurrency = 0\n").unwrap();
    let bad = drydock(&["check-config", "--config", main.to_str().unwrap()]);
    assert!(!bad.status.success());
}
