"""The browser client (ES modules) and the demo page, served on the HTTP side port
(`duplexd._ops.demo`). Files only: nothing here is imported by Python."""
