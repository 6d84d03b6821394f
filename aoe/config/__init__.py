"""Engine settings: command-line flags > environment (and ``.env``) > config file
> defaults, with the built-in price table."""
