"""100 tasks fanned into one; task 42 fails. Run: python examples/fanout.py"""

from worker.api import Job, run_local, task


@task(retries=1, retry_delay_ms=100)  # a failed attempt is retried once, 100 ms later
def inverse(x):
    return 1 / (x - 42)  # ZeroDivisionError for x == 42


if __name__ == "__main__":
    job = Job("fanout")
    job.add(max, *job.map(inverse, range(100)))  # any importable function can be a task
    print(run_local(job, workers=4))
