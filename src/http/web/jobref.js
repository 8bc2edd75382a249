// Turns what an artist pastes into the three ids the API wants. Accepted: a Deadline
// Cloud monitor URL of a job (…/<region>/farms/<farm>/queues/<queue>?jobId=<job>,
// maybe with &stepId=…&taskId=…), "farm-…/queue-…/job-…", or a bare "job-…" with
// the farm and queue given separately.
const PATTERN = {
  farm: /^farm-[0-9a-f]{32}$/,
  queue: /^queue-[0-9a-f]{32}$/,
  job: /^job-[0-9a-f]{32}$/,
};

function check(kind, value, where) {
  if (!PATTERN[kind].test(value)) {
    throw new Error(`${where}: "${value}" is not a ${kind} id (expected ${kind}-followed by 32 hex digits)`);
  }
  return value;
}

function fromUrl(text) {
  let url;
  try {
    url = new URL(text);
  } catch {
    throw new Error("that looks like a link but is not a valid URL");
  }
  const parts = url.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  const f = parts.indexOf("farms");
  const q = parts.indexOf("queues");
  if (f < 0 || q !== f + 2 || !parts[f + 1] || !parts[q + 1]) {
    throw new Error("this URL is not a Deadline Cloud monitor page of a queue (…/farms/farm-…/queues/queue-…)");
  }
  const farmId = check("farm", parts[f + 1], "the URL's farm");
  const queueId = check("queue", parts[q + 1], "the URL's queue");
  // Older links put the job in the path; the monitor selects it with ?jobId=.
  const job = url.searchParams.get("jobId") ?? (parts[q + 2] === "jobs" ? parts[q + 3] : null);
  if (!job) {
    throw new Error("this monitor URL shows a queue, not a job: select the job in the monitor and copy the URL again (it then holds ?jobId=…)");
  }
  return { farmId, queueId, jobId: check("job", job, "the URL's jobId") };
}

export function parseJobRef(input, farm, queue) {
  const text = input.trim();
  if (!text) {
    throw new Error("enter a job id (job-…), farm-…/queue-…/job-…, or a monitor URL");
  }
  if (/^https?:\/\//i.test(text)) {
    return fromUrl(text);
  }
  const parts = text.split("/");
  if (parts.length === 3) {
    return {
      farmId: check("farm", parts[0], "the first part"),
      queueId: check("queue", parts[1], "the second part"),
      jobId: check("job", parts[2], "the third part"),
    };
  }
  if (parts.length !== 1) {
    throw new Error("expected a job id, farm-…/queue-…/job-…, or a monitor URL");
  }
  const jobId = check("job", text, "Job ID");
  if (!farm.trim() || !queue.trim()) {
    throw new Error("a bare job id needs the Farm and Queue fields filled in");
  }
  return {
    farmId: check("farm", farm.trim(), "Farm"),
    queueId: check("queue", queue.trim(), "Queue"),
    jobId,
  };
}

export function parseQueueRef(input) {
  const text = input.trim();
  if (/^https?:\/\//i.test(text)) {
    let url;
    try {
      url = new URL(text);
    } catch {
      throw new Error("that looks like a link but is not a valid URL");
    }
    const parts = url.pathname.split("/").filter(Boolean).map(decodeURIComponent);
    const f = parts.indexOf("farms");
    const q = parts.indexOf("queues");
    if (f < 0 || q !== f + 2) {
      throw new Error("this URL is not a Deadline Cloud monitor page of a queue");
    }
    return {
      farmId: check("farm", parts[f + 1] ?? "", "the URL's farm"),
      queueId: check("queue", parts[q + 1] ?? "", "the URL's queue"),
    };
  }
  const parts = text.split("/");
  if (parts.length !== 2) {
    throw new Error("expected farm-…/queue-… or a monitor URL of the queue");
  }
  return {
    farmId: check("farm", parts[0], "the first part"),
    queueId: check("queue", parts[1], "the second part"),
  };
}
