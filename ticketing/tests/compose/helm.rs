//! The Helm chart's provisioning job, as far as no cluster allows: the
//! rendered Job's image, command, environment and security context, run as
//! a container against the compose stack's NATS.

use serde_json::Value;

use crate::stack::Stack;

/// The helm binary (`TICKETING_TEST_HELM`), or `None` (after saying why)
/// where it is optional; required where engines are (CI).
fn helm() -> Option<String> {
    match std::env::var("TICKETING_TEST_HELM") {
        Ok(helm) => Some(helm),
        Err(_) if store::testing::engines_required() => {
            panic!("TICKETING_TEST_HELM must name a helm binary (deploy/check installs one)")
        }
        Err(_) => {
            store::testing::skipped("the chart's streams job (set TICKETING_TEST_HELM)");
            None
        }
    }
}

/// Renders the chart's streams Job for the image compose runs and runs its
/// container on the compose network, as Kubernetes would run the pod: its
/// arguments after the image's entrypoint, its environment, its user, a
/// read-only root filesystem. The compose `streams` job applied the same
/// spec before, so the chart's finds nothing to change.
pub fn chart_streams_job_runs_against(stack: &Stack<'_>, network: &str) {
    let Some(helm) = helm() else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let rendered = std::process::Command::new(helm)
        .args(["template", "compose"])
        .arg(root.join("deploy/helm/ticketing"))
        .args([
            "--kube-version",
            "1.30.0",
            "--show-only",
            "templates/streams-job.yaml",
        ])
        .args(["--set", "secrets.jwtKey=compose-test-key-0123456789"])
        .args(["--set", "image.repository=ticketing,image.tag=local"])
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let job: Value = serde_saphyr::from_str(&String::from_utf8(rendered.stdout).unwrap()).unwrap();
    let pod = &job["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };

    let mut run = vec![
        "run".to_owned(),
        "--rm".into(),
        "--network".into(),
        network.into(),
    ];
    run.push("--user".into());
    run.push(format!(
        "{}:{}",
        pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]
    ));
    if container["securityContext"]["readOnlyRootFilesystem"] == true {
        run.push("--read-only".into());
    }
    for var in container["env"].as_array().unwrap() {
        let value = if var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            "compose-ticketing-streams-0".to_owned()
        } else {
            text(&var["value"])
        };
        run.push("-e".into());
        run.push(format!("{}={value}", text(&var["name"])));
    }
    run.push(text(&container["image"]));
    run.extend(container["args"].as_array().unwrap().iter().map(text));
    let args: Vec<&str> = run.iter().map(String::as_str).collect();
    let out = stack.docker(&args);
    assert!(
        out.contains("Plan: 0 to create, 0 to update, 0 to recreate, 0 to delete"),
        "the chart's job found changes to make after compose's job:\n{out}"
    );
}
