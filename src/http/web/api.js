// The page's one way to the service: its public HTTP API. The team token lives in
// this tab's sessionStorage and leaves only in the Authorization header: never in a
// URL, a cookie or localStorage.
const KEY = "deadline-notifier.token";

export const session = {
  token() {
    return sessionStorage.getItem(KEY);
  },
  remember(token) {
    sessionStorage.setItem(KEY, token);
  },
  forget() {
    sessionStorage.removeItem(KEY);
  },
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function api(method, path, body, token = session.token()) {
  const headers = { Authorization: `Bearer ${token ?? ""}` };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `the service did not answer (${e.message})`);
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const why = data && typeof data.error === "string" ? data.error : resp.statusText;
    throw new ApiError(resp.status, `${why} (HTTP ${resp.status})`);
  }
  return data;
}
