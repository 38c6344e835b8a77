// The lrface web demo: plain DOM code over the public HTTP API (fetch + FormData), nothing to build.
"use strict";

const $ = (id) => document.getElementById(id);

const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem("lrface-api-key") || "";
keyInput.addEventListener("change", () => sessionStorage.setItem("lrface-api-key", keyInput.value.trim()));

function authHeaders() {
  const key = keyInput.value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

// fetch + the API's JSON error shape ({"error", "message"}) turned into an exception with a readable message.
async function api(method, path, body, raw) {
  const response = await fetch(path, { method, body, headers: authHeaders() });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!response.ok) {
    const code = data && data.error ? data.error : "http_" + response.status;
    const message = data && data.message ? data.message : text.slice(0, 200);
    throw new Error(`${response.status} ${code}: ${message}`);
  }
  return raw || data === null ? text : data;
}

function setStatus(id, text, isError) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

function dataUrl(mediaType, base64) { return `data:${mediaType};base64,${base64}`; }

// -- 1. synthesis --------------------------------------------------------------------------------------------

function drawPhoto(file, box) {
  const canvas = $("synth-photo");
  const img = new Image();
  img.onload = () => {
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    if (box) {
      ctx.lineWidth = Math.max(2, img.naturalWidth / 150);
      ctx.strokeStyle = "#00e676";
      ctx.strokeRect(box.x, box.y, box.width, box.height);
    }
    URL.revokeObjectURL(img.src);
  };
  img.src = URL.createObjectURL(file);
}

function parseHeights(text) {
  const heights = text.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  if (!heights.length) return [null];  // null: heights drawn from the model's distribution
  for (const h of heights) {
    if (!Number.isInteger(h)) throw new Error(`not a height in px: ${h}`);
  }
  return heights;
}

async function synthesize() {
  const file = $("synth-image").files[0];
  if (!file) { setStatus("synth-status", "choose an image first", true); return; }
  setStatus("synth-status", "working…");
  const gallery = $("synth-gallery");
  gallery.replaceChildren();
  try {
    const heights = parseHeights($("synth-heights").value);
    const seed = $("synth-seed").value;
    let box = null;
    let first = true;
    for (const height of heights) {
      const form = new FormData();
      form.append("image", file);
      form.append("variants", $("synth-variants").value);
      form.append("align", $("synth-align").value);
      if (seed !== "") form.append("seed", seed);
      if (height !== null) form.append("height", String(height));
      if (first) form.append("include_face", "true");
      const body = await api("POST", "/v1/synthesize", form);
      if (first) {
        box = body.face_box;
        $("synth-face").src = body.face_image_base64 ? dataUrl("image/png", body.face_image_base64) : "";
        $("synth-seed").value = body.seed;
        first = false;
      }
      const row = document.createElement("div");
      row.className = "heightrow";
      const title = document.createElement("h3");
      title.textContent = height === null ? "drawn" : `${height} px`;
      row.append(title);
      for (const v of body.variants) {
        const cell = document.createElement("div");
        cell.className = "variant";
        const native = new Image();
        native.className = "native";
        native.src = dataUrl(v.media_type, v.image_base64);
        native.alt = `variant ${v.k}, ${v.width}x${v.height}`;
        const enlarged = native.cloneNode();
        enlarged.className = "enlarged";
        const label = document.createElement("span");
        label.textContent = `k=${v.k} · ${v.width}x${v.height}`;
        cell.append(enlarged, native, label);
        row.append(cell);
      }
      gallery.append(row);
    }
    drawPhoto(file, box);
    setStatus("synth-status", `seed ${$("synth-seed").value}` + (box ? `; face found (score ${box.score})` : ""));
    $("synth-reroll").disabled = false;
  } catch (err) {
    setStatus("synth-status", err.message, true);
  }
}

$("synth-form").addEventListener("submit", (e) => { e.preventDefault(); synthesize(); });
$("synth-reroll").addEventListener("click", () => {
  $("synth-seed").value = Math.floor(Math.random() * 2 ** 31);
  synthesize();
});

// -- 2. verification -----------------------------------------------------------------------------------------

$("verify-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const a = $("verify-a").files[0], b = $("verify-b").files[0];
  if (!a || !b) { setStatus("verify-status", "choose two images", true); return; }
  setStatus("verify-status", "working…");
  $("verify-result").hidden = true;
  const form = new FormData();
  form.append("image_a", a);
  form.append("image_b", b);
  if ($("verify-align").value) form.append("align", $("verify-align").value);
  form.append("model", $("verify-model").value);
  try {
    const r = await api("POST", "/v1/verify", form);
    $("verify-similarity").textContent = r.similarity.toFixed(4);
    $("verify-threshold").textContent = r.threshold.toFixed(4);
    const decision = $("verify-decision");
    decision.textContent = r.same_person ? "same person" : "different people";
    decision.className = r.same_person ? "same" : "different";
    $("verify-result").hidden = false;
    setStatus("verify-status", `model ${r.model_id}`);
  } catch (err) {
    setStatus("verify-status", err.message, true);
  }
});

// -- 3. bulk job ---------------------------------------------------------------------------------------------

const FINAL_STATES = ["succeeded", "failed", "cancelled"];

function showManifest(text) {
  const rows = text.split("\n").filter(Boolean).map((line) => JSON.parse(line));
  const tbody = $("job-manifest").querySelector("tbody");
  tbody.replaceChildren();
  for (const r of rows.slice(0, 200)) {
    const tr = document.createElement("tr");
    for (const value of [r.source, r.output, r.k, r.height, r.width]) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.append(td);
    }
    tbody.append(tr);
  }
  $("job-manifest").hidden = false;
  return rows.length;
}

$("job-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const archive = $("job-archive").files[0];
  if (!archive) { setStatus("job-status", "choose an archive", true); return; }
  const progress = $("job-progress");
  progress.value = 0;
  $("job-manifest").hidden = true;
  const form = new FormData();
  form.append("archive", archive);
  form.append("variants", $("job-variants").value);
  if ($("job-seed").value !== "") form.append("seed", $("job-seed").value);
  try {
    setStatus("job-status", "uploading…");
    let job = await api("POST", "/v1/jobs", form);
    while (true) {
      progress.max = Math.max(1, job.counts.total);
      progress.value = job.counts.done + job.counts.failed;
      setStatus("job-status", `job ${job.job_id}: ${job.state}, ${job.counts.done}/${job.counts.total} done, ${job.counts.failed} failed`);
      if (FINAL_STATES.includes(job.state)) break;
      await new Promise((resolve) => setTimeout(resolve, 500));
      job = await api("GET", `/v1/jobs/${job.job_id}`);
    }
    if (job.state === "succeeded") {
      const n = showManifest(await api("GET", job.manifest_url, undefined, true));
      setStatus("job-status", `job ${job.job_id}: succeeded, ${n} variants written to ${job.output_dir}`);
    } else if (job.error) {
      setStatus("job-status", `job ${job.job_id}: ${job.state}: ${job.error}`, true);
    }
  } catch (err) {
    setStatus("job-status", err.message, true);
  }
});
