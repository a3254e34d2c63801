package callio

import "syscall"

const noFollow = syscall.O_NOFOLLOW
