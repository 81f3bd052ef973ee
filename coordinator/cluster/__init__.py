"""The coordinator inside a Kubernetes cluster, through the official `kubernetes` client.

    api.py          how to reach the API server (in the cluster: the pod's service account)
    lease_lock.py   a coordination.k8s.io Lease as the official elector's lock
    leadership.py   Lease leader election: only the leader opens the state and runs rounds
    edge_pods.py    watch edge pods by label; a deleted pod's devices leave the round at once
    publication.py  what the coordinator writes to the cluster: device credentials, its status
    commands.py     `fedrec k8s status | scale` (the operator's side, with their kubeconfig)

Nothing outside this package imports `kubernetes`.
"""
