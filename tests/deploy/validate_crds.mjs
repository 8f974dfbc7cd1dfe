// Validate custom resources against their CRD schemas (@kubernetes-models/* npm packages).
//
//   node validate_crds.mjs MODELS_DIR < objects.json
//
// objects.json is a JSON array of Kubernetes objects. For each one this prints a JSON line
// {kind, name, errors, unknownFields, freeForm} and exits 1 if any object has a schema error,
// an unknown field, or a kind with no model (nothing is skipped silently).
//
// The generated schemas do not reject unknown fields (the API server prunes them, or rejects
// them with strict field validation). To catch typos anyway, the object is wrapped in a Proxy
// that records which keys the compiled validator reads: in an object where the validator reads
// some keys by name, a key it never reads is not in the schema. An object whose keys are all
// enumerated is a map (labels, trigger metadata) and is not checked; one the validator never
// looks into is free-form and is reported as such.
import { pathToFileURL } from "node:url";
import { join } from "node:path";
import { readFileSync } from "node:fs";

const PACKAGES = {
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "keda.sh": "@kubernetes-models/keda",
};

async function modelFor(modelsDir, apiVersion, kind) {
  const [group, version] = apiVersion.split("/");
  const pkg = PACKAGES[group];
  if (!pkg || !version) return null;
  const file = join(modelsDir, "node_modules", pkg, group, version, `${kind}.js`);
  try {
    const module = await import(pathToFileURL(file).href);
    return module[kind] ?? null;
  } catch (error) {
    if (error.code === "ERR_MODULE_NOT_FOUND") return null;
    throw error;
  }
}

function tracked(value, path, records) {
  if (value === null || typeof value !== "object") return value;
  const record = { path, value, read: new Set(), enumerated: false };
  records.push(record);
  const children = new Map();
  return new Proxy(value, {
    get(target, key, receiver) {
      const child = Reflect.get(target, key, receiver);
      if (typeof key !== "string") return child;
      record.read.add(key);
      if (child === null || typeof child !== "object") return child;
      if (!children.has(key)) children.set(key, tracked(child, `${path}/${key}`, records));
      return children.get(key);
    },
    has(target, key) {
      if (typeof key === "string") record.read.add(key);
      return Reflect.has(target, key);
    },
    ownKeys(target) {
      record.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}

function fieldReport(records) {
  const unknownFields = [];
  const freeForm = [];
  for (const { path, value, read, enumerated } of records) {
    if (Array.isArray(value) || enumerated) continue;
    const keys = Object.keys(value);
    if (read.size === 0) {
      if (keys.length > 0) freeForm.push(path || "/");
      continue;
    }
    for (const key of keys) if (!read.has(key)) unknownFields.push(`${path}/${key}`);
  }
  return { unknownFields, freeForm };
}

async function validateOne(modelsDir, object) {
  const { apiVersion = "", kind = "", metadata = {} } = object;
  const report = { apiVersion, kind, name: metadata.name ?? "", errors: [] };
  const Model = await modelFor(modelsDir, apiVersion, kind);
  if (!Model) {
    report.errors.push(`no CRD model for ${apiVersion} ${kind}`);
    return { ...report, unknownFields: [], freeForm: [] };
  }
  const records = [];
  try {
    Model.prototype.validate.call(tracked(object, "", records));
  } catch (error) {
    report.errors.push(error.message);
  }
  return { ...report, ...fieldReport(records) };
}

const modelsDir = process.argv[2];
if (!modelsDir) {
  console.error("usage: node validate_crds.mjs MODELS_DIR < objects.json");
  process.exit(2);
}
const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = objects.length === 0;
for (const object of objects) {
  const report = await validateOne(modelsDir, object);
  if (report.errors.length > 0 || report.unknownFields.length > 0) failed = true;
  console.log(JSON.stringify(report));
}
process.exit(failed ? 1 : 0);
