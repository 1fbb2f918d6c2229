# The control plane on Nomad: stateless, several instances behind Nomad's service discovery (put your load
# balancer or Consul-aware proxy in front). docs/deploy.md. Its secrets are Nomad Variables at
# nomad/jobs/wrenn-controlplane: database_url, encryption_key, jwt_secret, ca_pem, ca_key_pem.
job "wrenn-controlplane" {
  type = "service"

  group "controlplane" {
    count = 3

    network {
      port "http" {
        to = 8080
      }
    }

    service {
      name     = "wrenn-controlplane"
      port     = "http"
      provider = "nomad"

      check {
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    update {
      max_parallel     = 1
      min_healthy_time = "10s"
      auto_revert      = true
    }

    task "server" {
      driver = "docker"
      user   = "10001"

      config {
        image = "registry.example.internal/wrenn:0.1.0"
        args  = ["server", "--host", "0.0.0.0", "--port", "8080", "--data-dir", "/local/data", "--log-format", "json"]
        ports = ["http"]
      }

      template {
        destination = "secrets/wrenn.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/wrenn-controlplane" }}
          DATABASE_URL={{ .database_url }}
          WRENN_ENCRYPTION_KEY={{ .encryption_key }}
          JWT_SECRET={{ .jwt_secret }}
          {{ end }}
        EOT
      }

      template {
        destination = "secrets/ca.pem"
        data        = "{{ with nomadVar \"nomad/jobs/wrenn-controlplane\" }}{{ .ca_pem }}{{ end }}"
      }

      template {
        destination = "secrets/ca-key.pem"
        perms       = "0400"
        data        = "{{ with nomadVar \"nomad/jobs/wrenn-controlplane\" }}{{ .ca_key_pem }}{{ end }}"
      }

      env {
        WRENN_CA_CERT    = "/secrets/ca.pem"
        WRENN_CA_KEY     = "/secrets/ca-key.pem"
        WRENN_PUBLIC_URL = "https://wrenn.example.com"
      }

      resources {
        cpu    = 250
        memory = 512
      }
    }
  }
}
