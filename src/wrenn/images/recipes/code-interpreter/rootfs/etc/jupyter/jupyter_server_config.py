# Jupyter Server in the code-interpreter image (system-wide config: /etc/jupyter).
c = get_config()  # noqa: F821

# No token or password, no XSRF check, any Host and Origin: the server is reached only through the
# sandbox's traffic proxy, whose access rules are the sandbox's (as on E2B's template).
c.IdentityProvider.token = ""
c.ServerApp.password = ""
c.ServerApp.disable_check_xsrf = True
c.ServerApp.allow_remote_access = True
c.ServerApp.allow_origin = "*"
c.ServerApp.open_browser = False
c.ServerApp.root_dir = "/home/user"
# Charts and large outputs travel on iopub: do not throttle them.
c.ServerApp.iopub_data_rate_limit = 1_000_000_000
# A kernel that is idle stays: contexts live as long as the sandbox.
c.MappingKernelManager.cull_idle_timeout = 0
