#!/bin/sh
# A flaky job retried AWS Batch style: exit code 75 (EX_TEMPFAIL) means "try
# again", anything else stops at once (first matching rule wins; with no
# matching rule a failed attempt is retried). Here attempts 1 and 2 fail with
# 75 and attempt 3 succeeds. Timeouts and cancels are never retried.
#   launcher run examples/retry.sh
#LAUNCHER --name retry --attempts 3
#LAUNCHER --retry-on retry:exit=75 --retry-on exit:reason=*
#EXPECT exit=0 lines=1
if [ "$AWS_BATCH_JOB_ATTEMPT" -lt 3 ]; then
    echo "attempt $AWS_BATCH_JOB_ATTEMPT: server busy, try again" >&2
    exit 75
fi
echo "attempt $AWS_BATCH_JOB_ATTEMPT: done"
