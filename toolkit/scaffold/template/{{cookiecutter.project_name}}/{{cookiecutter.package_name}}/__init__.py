"""{{ cookiecutter.project_name }}: consumes {{ cookiecutter.topics }} with Ouroboros Epistle Forge."""
