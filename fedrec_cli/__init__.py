"""The `fedrec` command line: one entry point for the simulation, the deployment and the cluster.

    main            parses, dispatches, and maps errors to exit codes (errors)
    training_flags  the flags of a SimulationConfig, shared by `simulate` and `up`
    simulate        `fedrec simulate`, `export`, `worker` (the TFF side)
    deploy          `fedrec up`, `serve`, `status` (the coordinator)
    cluster         `fedrec k8s status|scale` (the deployment in Kubernetes)

This package sits above the others and nothing imports it back, so the commands share their
flags without a circle between the simulation and the coordinator. Each command checks what it
can before importing TensorFlow, so a bad flag costs a fraction of a second.
"""
