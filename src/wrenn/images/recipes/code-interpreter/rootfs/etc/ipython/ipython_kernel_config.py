# IPython kernels in the code-interpreter image (system-wide config: /etc/ipython).
c = get_config()  # noqa: F821

# Plain tracebacks (no ANSI colours) and whole sequences in text results, as E2B's template.
c.InteractiveShell.colors = "nocolor"
c.PlainTextFormatter.max_seq_length = 0
