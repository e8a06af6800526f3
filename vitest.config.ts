import { defineConfig } from 'vitest/config';

// Three projects: `unit` is the default suite; `slow` holds heavy tests (large files, long fuzzing)
// and `docs` the doc test (every command example of README.md and docs/, run as written), each run by
// CI in a step of its own. A test file is slow when its name ends in `.slow.test.ts`, a doc test when
// it ends in `.docs.test.ts`.
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/**/*.test.ts'],
          exclude: ['test/**/*.slow.test.ts', 'test/**/*.docs.test.ts'],
          testTimeout: 30_000,
          hookTimeout: 60_000,
        },
      },
      {
        test: {
          name: 'slow',
          include: ['test/**/*.slow.test.ts'],
          testTimeout: 600_000,
          hookTimeout: 600_000,
        },
      },
      {
        test: {
          name: 'docs',
          include: ['test/**/*.docs.test.ts'],
          testTimeout: 1_800_000,
          hookTimeout: 60_000,
        },
      },
    ],
  },
});
