"""Reports on the call records (`switchboard report`): figures in `queries`, output in `render`
(table, CSV, JSON) and `html` (one self-contained file with plots), the command in `commands`."""
