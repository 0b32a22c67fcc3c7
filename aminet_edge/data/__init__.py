"""Images, data-set layouts and the synthetic default data set (numpy + PIL only: the runtime uses them)."""
