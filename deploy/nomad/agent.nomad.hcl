# The host agents on Nomad: a system job, one per KVM client (client meta `wrenn_kvm = "true"`), run with
# raw_exec as root from a Wrenn installed on the node (/opt/wrenn: docs/deploy.md), on the node's network.
# Each node's one-time registration token is the Nomad Variable nomad/jobs/wrenn-agent/<node name>
# (key `token`); once registered, the agent keeps its credentials in /var/lib/wrenn and ignores it.
#
# VMs do NOT outlive the task: Nomad stops a raw_exec task by killing every process of its cgroup, the
# agent's VMMs included. So drain a node's host (`wrenn admin hosts drain HOST`: its capsules are paused to
# /var/lib/wrenn) before stopping, updating or restarting this job there.
job "wrenn-agent" {
  type = "system"

  constraint {
    attribute = "${meta.wrenn_kvm}"
    value     = "true"
  }

  update {
    max_parallel = 1
  }

  group "agent" {
    restart {
      attempts = 10
      interval = "30m"
      delay    = "10s"
      mode     = "delay"
    }

    task "image" {
      lifecycle {
        hook = "prestart"
      }

      driver = "raw_exec"

      config {
        command = "/opt/wrenn/bin/wrenn"
        args    = ["image", "build", "--template", "minimal", "--data-dir", "/var/lib/wrenn", "--no-progress"]
      }
    }

    task "agent" {
      driver       = "raw_exec"
      kill_timeout = "120s"

      config {
        command = "/bin/sh"
        args    = ["${NOMAD_TASK_DIR}/start.sh"]
      }

      template {
        destination = "secrets/token"
        perms       = "0400"
        data        = "{{ with nomadVar (printf \"nomad/jobs/wrenn-agent/%s\" (env \"node.unique.name\")) }}{{ .token }}{{ end }}"
      }

      template {
        destination = "local/start.sh"
        data        = <<-EOT
          token="$(cat "$NOMAD_SECRETS_DIR/token" 2>/dev/null || true)"
          if [ -z "$token" ] && [ ! -f /var/lib/wrenn/host-credentials.json ]; then
            echo "no registration token for this node (nomad/jobs/wrenn-agent/{{ env "node.unique.name" }})" >&2
            exit 1
          fi
          exec /opt/wrenn/bin/wrenn agent --data-dir /var/lib/wrenn --host 0.0.0.0 --port 50051 \
            --proxy-port 50052 --register "$${token:-spent}" --control-plane "https://wrenn.example.com" \
            --address "{{ env "attr.unique.network.ip-address" }}:50051" --log-format json
        EOT
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
