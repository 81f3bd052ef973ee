# Shared settings of the real-node scripts (sourced). Everything they make lives under $RNROOT,
# except the kube binaries, cached with the cluster tier's in ~/.cache/fedrec/kube-v1.20.2.
RNROOT=${RNROOT:-$HOME/.cache/fedrec-realnode}
RN=${RN:-$RNROOT/node}                                   # the running node's state (made by 60-, removed by 90-)
KBIN=${KBIN:-${FEDREC_KUBE_BIN_DIR:-$HOME/.cache/fedrec/kube-v1.20.2}}
KWORK=${KWORK:-$RNROOT/kbuild}                           # the kube source tree and its go build cache
# podman/buildah: this machine's hard open-files limit (20000) is below their default container
# ulimits, so runc fails with "error setting rlimit type 7" unless containers.conf lowers them.
CONTAINERS_CONF=${CONTAINERS_CONF:-$RNROOT/containers.conf}
export RNROOT RN KBIN KWORK CONTAINERS_CONF
