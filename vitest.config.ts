import { defineConfig } from 'vitest/config';

// Two projects: `unit` is the default suite; `slow` holds heavy tests (large files, long fuzzing)
// that CI runs in a separate step. A test file is slow when its name ends in `.slow.test.ts`.
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/**/*.test.ts'],
          exclude: ['test/**/*.slow.test.ts'],
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
    ],
  },
});
