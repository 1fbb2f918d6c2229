# mypy: ignore-errors
"""Run inside every Python kernel the execution server starts (never imported by the server): E2B's
formatters, so that a cell's results carry `e2b/chart` (a matplotlib figure, through E2B's own extractor,
the `e2b-charts` package), `e2b/data` (a pandas DataFrame) and NumPy-aware JSON, as E2B's template does;
and images saved with Pillow shown as results. Everything it defines is removed from the user's namespace."""


def _wrenn_prelude() -> None:
    import sys

    from IPython import get_ipython
    from IPython.core.formatters import BaseFormatter, JSONFormatter
    from traitlets import ObjectName, Unicode

    class E2BDataFormatter(BaseFormatter):
        format_type = Unicode("e2b/data")
        print_method = ObjectName("_repr_e2b_data_")
        _return_type = (dict, str)

        def __call__(self, obj):
            pandas = sys.modules.get("pandas")  # no DataFrame can exist before pandas is imported
            if pandas is None or not isinstance(obj, pandas.DataFrame):
                return super().__call__(obj)
            result = obj.to_dict(orient="list")
            for key, values in result.items():
                result[key] = [v.isoformat() if isinstance(v, pandas.Timestamp) else v for v in values]
            return result

    class E2BChartFormatter(BaseFormatter):
        format_type = Unicode("e2b/chart")
        print_method = ObjectName("_repr_e2b_chart_")
        _return_type = (dict, str)

        def __call__(self, obj):
            if sys.modules.get("matplotlib") is None:
                return super().__call__(obj)
            from matplotlib.figure import Figure

            if not isinstance(obj, Figure):
                return super().__call__(obj)
            try:
                from e2b_charts import chart_figure_to_dict

                return chart_figure_to_dict(obj)
            except Exception:  # noqa: BLE001 (as E2B's template: a chart it cannot read is no chart)
                return {}

    class E2BJSONFormatter(JSONFormatter):
        def __call__(self, obj):
            if isinstance(obj, (list, dict)):
                try:
                    import orjson

                    option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
                    return orjson.loads(orjson.dumps(obj, option=option)), {"expanded": True}
                except (ImportError, TypeError):
                    pass
            return super().__call__(obj)

    shell = get_ipython()
    formatters = shell.display_formatter.formatters
    formatters["e2b/data"] = E2BDataFormatter(parent=shell.display_formatter)
    formatters["e2b/chart"] = E2BChartFormatter(parent=shell.display_formatter)
    formatters["application/json"] = E2BJSONFormatter(parent=shell.display_formatter)

    try:
        from IPython.display import display
        from PIL.Image import Image
        from PIL.ImageShow import UnixViewer
    except ImportError:
        return

    def show_file(self, path, **options):  # no display to show an image on: it becomes a result instead
        return 0

    UnixViewer.show_file = show_file
    original_save = Image.save

    def save(image, fp, format=None, **params):
        if isinstance(fp, str):
            display(image)
        return original_save(image, fp, format, **params)

    Image.save = save


_wrenn_prelude()
del _wrenn_prelude
