//! deploy/kubernetes/ as a cluster would take it: the kustomization renders, every manifest is
//! valid against the Kubernetes 1.31 schemas (kubernetes-validate, offline), the config in the
//! ConfigMap is one shardgate accepts, and the pieces agree with each other (ports, probes,
//! the config mounted as a directory so edits reload, a grace period that covers the drain).

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{run_shardgate, run_with_input};

/// The schemas' Kubernetes version, pinned.
const KUBERNETES: &str = "1.31.0";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// YAML documents as JSON values, read by the YAML parser kubernetes-validate brings (PyYAML).
fn yaml_docs(yaml: &str) -> Vec<serde_json::Value> {
    let out = run_with_input(
        Command::new("python3").args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ]),
        yaml.as_bytes(),
    );
    assert!(out.status.success(), "PyYAML could not read the manifests");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_configmaps_config_is_one_shardgate_accepts() {
    let out = run_shardgate(&[&"check", &"-c", &deploy().join("shardgate.toml")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_manifests_render_validate_and_agree() {
    // kubectl answers `version --client`, not `--version`; kubernetes-validate runs as a
    // module, as pip may put its script where PATH does not look.
    let present = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    for (present, missing) in [
        (
            present("kubectl", &["version", "--client"]),
            "kubectl is not installed (Debian package `kubernetes-client`; .ci/run installs it)",
        ),
        (
            present("python3", &["-m", "kubernetes_validate", "--version"]),
            "kubernetes-validate is not installed (PyPI; .ci/run installs it)",
        ),
    ] {
        if !present {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{missing}");
            eprintln!("SKIPPED: {missing}");
            return;
        }
    }
    let kubectl = "kubectl";
    let rendered = Command::new(kubectl)
        .arg("kustomize")
        .arg(deploy())
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let rendered_file = dir.path().join("rendered.yaml");
    std::fs::write(&rendered_file, &rendered.stdout).unwrap();

    let mut files = vec![
        rendered_file.clone(),
        deploy().join("example-fleet/fleet.yaml"),
    ];
    for f in [
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
        "podmonitor.yaml",
    ] {
        files.push(deploy().join(f));
    }
    let out = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            KUBERNETES,
        ])
        .args(&files)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    for line in said.lines() {
        // The Prometheus Operator's PodMonitor is a custom resource: no built-in schema. Its
        // fields are checked against the Deployment below instead.
        let known_gap = line.contains("Couldn't find schema for kind PodMonitor");
        assert!(line.starts_with("INFO") || known_gap, "{line}");
    }
    println!("{said}");

    let docs = yaml_docs(&String::from_utf8_lossy(&rendered.stdout));
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} rendered"))
            .clone()
    };
    let (deployment, configmap, podmonitor, service) = (
        kind("Deployment"),
        kind("ConfigMap"),
        kind("PodMonitor"),
        kind("Service"),
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let port = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };

    // The config the pods read is the ConfigMap's, mounted as a directory: edits arrive as the
    // `..data` swap the watcher reloads from (a subPath mount never sees them).
    let mount = &container["volumeMounts"][0];
    assert!(
        mount.get("subPath").is_none(),
        "a subPath mount never updates"
    );
    let volume = &pod["volumes"][0];
    assert_eq!(volume["name"], mount["name"]);
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
    let config_path = format!("{}/shardgate.toml", mount["mountPath"].as_str().unwrap());
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["-c", config_path.as_str()]),
        "{args:?}"
    );
    let toml = configmap["data"]["shardgate.toml"].as_str().unwrap();
    assert_eq!(
        toml,
        std::fs::read_to_string(deploy().join("shardgate.toml")).unwrap()
    );

    // Ports and probes match what the config listens on.
    let listen_port = |section: &str| -> u64 {
        let after = toml.split(section).nth(1).unwrap();
        let line = after.lines().find(|l| l.starts_with("listen = ")).unwrap();
        line.trim_end_matches('"')
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(port("admin"), listen_port("[admin]"));
    assert_eq!(port("http"), listen_port("[[pools]]"));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(
        podmonitor["spec"]["podMetricsEndpoints"][0]["port"],
        "admin"
    );
    assert_eq!(
        podmonitor["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    // Hardened: non-root, read-only root filesystem, no privilege escalation, limits set.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let image_user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .and_then(|u| u.split(':').next())
        .unwrap();
    assert_eq!(
        pod["securityContext"]["runAsUser"].to_string(),
        image_user,
        "the pod runs as the image's user"
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_eq!(deployment["spec"]["replicas"], 2);

    // The grace period covers the preStop pause and the drain (shutdown_grace).
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pause: u64 = container["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let drain: u64 = toml
        .lines()
        .find_map(|l| l.strip_prefix("shutdown_grace = \""))
        .and_then(|v| v.trim_end_matches("s\"").parse().ok())
        .unwrap();
    assert!(grace > pause + drain, "{grace} s ≤ {pause} s + {drain} s");
}
