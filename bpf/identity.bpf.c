// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Placeholder: replaced by the identity programs (docs/IDENTITY.md). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("cgroup/sock_create")
int tw_sock_create(struct bpf_sock *sk)
{
	return 1;
}
