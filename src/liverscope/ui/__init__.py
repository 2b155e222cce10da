"""The user interfaces: the command line (Typer) and the Streamlit app (docs/architecture.md)."""
