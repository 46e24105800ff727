#!/usr/bin/env node
// A metalearn client in Node.js, built from the same .proto files as every other client.
//
//   node metalearn.js HOST:PORT request.json     (without arguments: the usage below, and the request format)
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const LOADER_OPTIONS = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

function load(file, includeDirs) {
  return grpc.loadPackageDefinition(protoLoader.loadSync(file, { ...LOADER_OPTIONS, includeDirs }));
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 30000 }, (error, response) =>
      error ? reject(error) : resolve(response));
  });
}

// Items: texts as they are, or a float32 tensor from its shape and base64 bytes.
function items({ texts, shape, data }) {
  if (texts) return { texts };
  return { tensor: { dtype: 'DATA_TYPE_FLOAT32', shape, data: Buffer.from(data, 'base64') } };
}

const USAGE = `usage: node metalearn.js HOST:PORT REQUEST.json

Calls health, ListModels and Classify on the metalearn server at HOST:PORT and
prints one JSON object: health, models, classes, labels, scores, method.

REQUEST.json (float32 tensors as base64 of their little-endian bytes, the item count first in each shape):
  {"support": {"shape": [10, 1, 28, 28], "data": "<base64>"},
   "labels": ["a", "a", "b", ...],            one per support item
   "queries": {"shape": [3, 1, 28, 28], "data": "<base64>"},
   "method": "METHOD_PROTOTYPE"}              optional: METHOD_FINETUNE, METHOD_TRANSDUCTIVE
For a text model, items are texts and the model is named:
  {"model": "text-minilm", "support": {"texts": ["...", ...]}, "labels": [...],
   "queries": {"texts": ["...", ...]}}
Optional in either: "rejection_threshold" (0: never answer unknown).
`;

async function main() {
  const [target, requestFile] = process.argv.slice(2);
  if (!target || !requestFile || target === '--help' || target === '-h') {
    process.stderr.write(USAGE);
    process.exit(2);
  }
  const request = JSON.parse(fs.readFileSync(requestFile, 'utf8'));
  const metalearn = load(['metalearn/v1/fewshot.proto', 'metalearn/v1/model.proto'], [PROTOS]).metalearn.v1;
  const health = load('health.proto', [__dirname]).grpc.health.v1;
  const credentials = grpc.credentials.createInsecure();

  const status = await call(new health.Health(target, credentials), 'Check', { service: '' });
  const models = await call(new metalearn.ModelService(target, credentials), 'ListModels', {});
  const answer = await call(new metalearn.FewShotService(target, credentials), 'Classify', {
    model: request.model || '',
    support: { items: items(request.support), labels: request.labels },
    queries: items(request.queries),
    method: request.method || 'METHOD_UNSPECIFIED',
    ...(request.rejection_threshold === undefined ? {} : { rejection_threshold: request.rejection_threshold }),
  });
  process.stdout.write(JSON.stringify({
    health: status.status,
    models: models.models.map((m) => ({ name: m.name, versions: m.versions })),
    classes: answer.classes,
    labels: answer.predictions.map((p) => p.label),
    scores: answer.predictions.map((p) => p.scores),
    method: answer.method,
  }) + '\n');
}

main().catch((error) => {
  process.stderr.write(`${error.code !== undefined ? grpc.status[error.code] : ''} ${error.details || error.message}\n`);
  process.exit(1);
});
