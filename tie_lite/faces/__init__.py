"""The faces people use: the command line, the OpenAI-compatible server, the chat and eval. Argument
parsing and user-facing wording live here."""
