import { sveltekit } from '@sveltejs/kit/vite';
import tailwindcss from '@tailwindcss/vite';
import { defineConfig } from 'vite';

export default defineConfig({
	plugins: [tailwindcss(), sveltekit()],
	build: { chunkSizeWarningLimit: 600 },
	server: {
		// `npm run dev` against a local control plane (wrenn up): the API and its WebSockets are proxied.
		proxy: {
			'/v1': { target: 'http://127.0.0.1:8080', ws: true },
			'/health': 'http://127.0.0.1:8080'
		}
	}
});
