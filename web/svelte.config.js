import adapter from '@sveltejs/adapter-static';
import { vitePreprocess } from '@sveltejs/vite-plugin-svelte';

/** A single-page app: every page is rendered in the browser; the control plane serves `index.html` for
 * the dashboard's paths and the hashed files under /_app. Output goes straight into the Python package. */
const config = {
	// TypeScript through esbuild first: Svelte's own type stripping misses some syntax.
	preprocess: vitePreprocess({ script: true }),
	kit: {
		adapter: adapter({
			pages: '../src/wrenn/controlplane/_dashboard',
			assets: '../src/wrenn/controlplane/_dashboard',
			fallback: 'index.html',
			strict: true
		}),
		// The inline start-up script is allowed by its hash; nothing else inline runs.
		csp: {
			mode: 'hash',
			directives: {
				'default-src': ['self'],
				'script-src': ['self'],
				'style-src': ['self', 'unsafe-inline'],
				'img-src': ['self', 'data:', 'blob:'],
				'connect-src': ['self'],
				'object-src': ['none'],
				'base-uri': ['self'],
				'form-action': ['self']
			}
		},
		// One script and one stylesheet: no waterfall of small chunks before the first page shows.
		output: { bundleStrategy: 'single' },
		version: { name: 'wrenn' }
	}
};

export default config;
