/**
 * A policy worker (policy-pool.ts): evaluates the policies that may cost more than the event loop can
 * spare. Each policy is compiled once per worker (PolicyCache, by source). Node-only.
 */
import { parentPort } from 'node:worker_threads';
import { PolicyCache, PolicyError, PUBLIC_DENIAL_MESSAGE } from '../policy/index.js';
import { type PolicyJob, type PolicyRun, type PolicyWorkerMessage, runPolicy } from './policy-run.js';

const cache = new PolicyCache(64);
const port = parentPort!;

function evaluate(job: PolicyJob): PolicyRun {
  try {
    return runPolicy(cache.get(job.source), job.input, job.explainClauses);
  } catch (e) {
    // The event loop compiled the same source before sending it, so this is not expected; fail closed.
    const why = e instanceof PolicyError ? e.message : String(e);
    return {
      decision: {
        allow: false,
        reasons: [`policy evaluation failed: ${why}`],
        publicMessage: PUBLIC_DENIAL_MESSAGE,
      },
    };
  }
}

port.on('message', (job: PolicyJob) => {
  port.postMessage({ type: 'result', id: job.id, run: evaluate(job) } satisfies PolicyWorkerMessage);
});
port.postMessage({ type: 'ready' } satisfies PolicyWorkerMessage);
